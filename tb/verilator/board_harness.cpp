// Verilator harness for hw.board.BoardTop: the board seen only through its UART pins
// (docs/board.md, *Verilator harness*).
//
// The harness clocks the model and, every cycle, bit-bangs queued bytes onto the rx pin (8N1,
// DIVISOR cycles per bit) and decodes the tx pin at the same rate. The host (sim.board's
// VerilatorLink) talks to it over stdin/stdout in little-endian binary frames:
//
//   'T' n:u32 data:n reply_len:u32 limit:u64   send data on rx, then clock until reply_len
//                                              bytes came back from tx or `limit` cycles
//                                              passed since the last byte was sent
//        → status:u8 cycle:u64 got:u32 bytes:got   status 0 ok, 1 timeout, 2 tx framing
//                                                  error, 3 bytes arrived before the request
//   'W' cycles:u64                             clock the idle line, then drop what arrived
//        → 0:u8 cycle:u64
//   'Q'                                        → 0:u8 cycle:u64, then exit 0
//
//   board_harness [--trace FILE] [--max-cycles N]     (N: watchdog over the whole run)
//
// Exit status 3 with one line on stderr for a harness error (bad frame, watchdog).
// board_config.h (written by sim/backends.py) defines TOP_HEADER, TOP_CLASS, DIVISOR and,
// for BoardTop(memory="sdram"), SDRAM_MODEL (the behavioural SDRAM of sdram_model.h).
#include "board_config.h"
#include TOP_HEADER

#include <verilated.h>
#if VM_TRACE
#include <verilated_vcd_c.h>
#endif

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

[[noreturn]] void fail(const std::string& msg) {
    std::fprintf(stderr, "error: %s\n", msg.c_str());
    std::fflush(stderr);
    std::exit(3);
}

#ifdef SDRAM_MODEL
#include "sdram_model.h"
#endif

namespace {

void read_exact(void* buf, size_t n) {
    if (n && std::fread(buf, 1, n, stdin) != n) fail("host closed the pipe");
}
template <typename T> T read_le() {
    uint8_t b[sizeof(T)];
    read_exact(b, sizeof b);
    T v = 0;
    for (size_t i = 0; i < sizeof b; ++i) v |= T(b[i]) << (8 * i);
    return v;
}
template <typename T> void write_le(T v) {
    uint8_t b[sizeof(T)];
    for (size_t i = 0; i < sizeof b; ++i) b[i] = uint8_t(v >> (8 * i));
    std::fwrite(b, 1, sizeof b, stdout);
}

class Board {
public:
    Board(const std::string& trace, uint64_t max_cycles)
        : ctx(new VerilatedContext), max_cycles(max_cycles) {
        if (!trace.empty()) ctx->traceEverOn(true);
        top.reset(new TOP_CLASS(ctx.get()));
#if VM_TRACE
        if (!trace.empty()) {
            tfp.reset(new VerilatedVcdC);
            top->trace(tfp.get(), 99);
            tfp->open(trace.c_str());
        }
#else
        if (!trace.empty()) fail("this harness was built without --trace");
#endif
        top->clk = 0;
        top->rst = 1;
        top->rx = 1;
        for (int i = 0; i < 4; ++i) tick();
        top->rst = 0;
        for (int i = 0; i < 4; ++i) tick();
    }
    ~Board() {
#if VM_TRACE
        if (tfp) tfp->close();
#endif
        top->final();
    }

    uint64_t cycle = 0;
    std::deque<uint8_t> received;
    bool frame_error = false;

    void queue_bytes(const std::vector<uint8_t>& data) {
        for (uint8_t byte : data) {
            tx_bits.push_back(0);
            for (int k = 0; k < 8; ++k) tx_bits.push_back((byte >> k) & 1);
            tx_bits.push_back(1);
        }
    }
    bool sending() const { return !tx_bits.empty() || hold; }

    void tick() {
        // Host → board: one bit every DIVISOR cycles.
        if (!hold && !tx_bits.empty()) {
            top->rx = tx_bits.front();
            tx_bits.pop_front();
            hold = DIVISOR;
        }
        if (hold) --hold;
#ifdef SDRAM_MODEL
        sdram.drive_dq(*top);
#endif
        top->clk = 0;
        top->eval();
        dump();
#ifdef SDRAM_MODEL
        sdram.sample(*top, cycle);     // the controller's registered outputs at the edge
#endif
        top->clk = 1;
        top->eval();
        dump();
        ++cycle;
        if (max_cycles && cycle > max_cycles) fail("watchdog: the run passed --max-cycles");
        decode(top->tx);
    }

private:
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<TOP_CLASS> top;
#if VM_TRACE
    std::unique_ptr<VerilatedVcdC> tfp;
#endif
#ifdef SDRAM_MODEL
    SdramModel sdram;
#endif
    uint64_t max_cycles;
    std::deque<uint8_t> tx_bits;
    int hold = 0;
    // Board → host decoder (as sim.board.SimLink.receiver): wait for a low line, sample the
    // middle of the start bit, then 8 data bits and the stop bit one bit time apart.
    int rx_state = -1;         // -1 idle, 0 start bit, 1..8 data bits, 9 stop bit
    int rx_wait = 0;
    uint8_t rx_byte = 0;

    void dump() {
#if VM_TRACE
        if (tfp) tfp->dump(ctx->time());
#endif
        ctx->timeInc(1);
    }

    void decode(int line) {
        if (rx_state < 0) {
            if (!line) { rx_state = 0; rx_wait = DIVISOR / 2; }
            return;
        }
        if (--rx_wait > 0) return;
        rx_wait = DIVISOR;
        if (rx_state == 0) {
            if (line) rx_state = -1;                // a glitch
            else { rx_state = 1; rx_byte = 0; }
        } else if (rx_state <= 8) {
            rx_byte |= uint8_t(line << (rx_state - 1));
            ++rx_state;
        } else {
            if (!line) frame_error = true;
            else received.push_back(rx_byte);
            rx_state = -1;
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    std::string trace;
    uint64_t max_cycles = 0;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a.rfind("+verilator", 0) == 0) continue;
        if (i + 1 >= argc) fail("missing value after " + a);
        if (a == "--trace") trace = argv[++i];
        else if (a == "--max-cycles") max_cycles = std::strtoull(argv[++i], nullptr, 0);
        else fail("unknown option " + a);
    }
    Verilated::commandArgs(argc, argv);
    Board board(trace, max_cycles);
    for (;;) {
        int c = std::fgetc(stdin);
        if (c == EOF || c == 'Q') {
            std::fputc(0, stdout);
            write_le<uint64_t>(board.cycle);
            std::fflush(stdout);
            return 0;
        }
        if (c == 'W') {
            uint64_t n = read_le<uint64_t>();
            for (uint64_t i = 0; i < n; ++i) board.tick();
            board.received.clear();
            board.frame_error = false;
            std::fputc(0, stdout);
            write_le<uint64_t>(board.cycle);
        } else if (c == 'T') {
            uint32_t n = read_le<uint32_t>();
            std::vector<uint8_t> data(n);
            read_exact(data.data(), n);
            uint32_t want = read_le<uint32_t>();
            uint64_t limit = read_le<uint64_t>();
            uint8_t status = 0;
            if (!board.received.empty()) {
                status = 3;
            } else {
                board.queue_bytes(data);
                while (board.sending()) board.tick();
                uint64_t t0 = board.cycle;
                while (board.received.size() < want && !board.frame_error) {
                    if (board.cycle - t0 > limit) { status = 1; break; }
                    board.tick();
                }
                if (board.frame_error) status = 2;
            }
            uint32_t got = uint32_t(board.received.size() < want || status == 3
                                    ? board.received.size() : want);
            std::fputc(status, stdout);
            write_le<uint64_t>(board.cycle);
            write_le<uint32_t>(got);
            for (uint32_t i = 0; i < got; ++i) {
                std::fputc(board.received.front(), stdout);
                board.received.pop_front();
            }
        } else {
            fail("unknown frame " + std::to_string(c));
        }
        std::fflush(stdout);
    }
}
