// Stand-alone Verilator harness for the accelerator top (docs/architecture.md, docs/isa.md).
//
// Models the ext memory (words of LANES bytes, loaded from a binary image, fixed read latency,
// optional pseudo-random back-pressure), starts the program over the CSR bus (PROG_BASE,
// PROG_LEN, CTRL = start), clocks until STATUS shows halted or error or the watchdog expires,
// then writes the final ext memory and the counters.
//
//   harness --image IN.bin --out OUT.bin --counters OUT.json --prog-base N --prog-len N
//           [--latency N] [--stall PERCENT] [--seed N] [--max-cycles N] [--ext-words N]
//           [--trace FILE.fst|.vcd]
//
// Exit status: 0 when the counters file was written (the run halted, stopped with an error or
// hit the watchdog: see "halted", "error", "timeout" in the JSON), 3 for a harness error (bad
// arguments, unreadable image, ext access outside the memory), with one line on stderr.
//
// harness_config.h (generated next to the Verilog by sim/backends.py) defines TOP_HEADER,
// TOP_CLASS and LANES.
#include "harness_config.h"
#include TOP_HEADER

#include <verilated.h>
#if VM_TRACE_FST
#include <verilated_fst_c.h>
#elif VM_TRACE
#include <verilated_vcd_c.h>
#endif

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

// Verilator spells the "__" of Amaranth's port names (bus__cyc, mem__cmd__valid) as "___05F".
#define BUS(x) bus___05F##x
#define MEM_CMD(x) mem___05Fcmd___05F##x
#define MEM_RSP(x) mem___05Frsp___05F##x

namespace {

constexpr int L = LANES;
constexpr int CMD_ADDR = 0, CMD_WE = 32, CMD_DATA = 33, CMD_MASK = 33 + 8 * L;

enum Csr : uint8_t {
    ID = 0x00, CONFIG = 0x01, CTRL = 0x02, STATUS = 0x03, PC = 0x04, PROG_BASE = 0x05,
    PROG_LEN = 0x06, CYCLES = 0x08, MAC_CYCLES = 0x09, STALL_DMA = 0x0A, STALL_WB = 0x0B,
    INSTRET = 0x0C, ARRAY_CYCLES = 0x0D,
};

// ---- bit access on Verilator port types (CData/SData/IData/QData or VlWide<N>)
template <typename T>
typename std::enable_if<std::is_integral<T>::value, int>::type get_bit(const T& v, int i) {
    return int((uint64_t(v) >> i) & 1u);
}
template <std::size_t N>
int get_bit(const VlWide<N>& v, int i) {
    return int((v[i / 32] >> (i % 32)) & 1u);
}
template <typename T>
uint64_t get_bits(const T& v, int lo, int width) {
    uint64_t out = 0;
    for (int b = 0; b < width; ++b) out |= uint64_t(get_bit(v, lo + b)) << b;
    return out;
}
template <typename T>
typename std::enable_if<std::is_integral<T>::value>::type set_byte(T& v, int byte, uint8_t x) {
    uint64_t w = uint64_t(v);
    w &= ~(uint64_t(0xFF) << (8 * byte));
    w |= uint64_t(x) << (8 * byte);
    v = T(w);
}
template <std::size_t N>
void set_byte(VlWide<N>& v, int byte, uint8_t x) {
    int word = byte / 4, sh = 8 * (byte % 4);
    v[word] = (v[word] & ~(0xFFu << sh)) | (uint32_t(x) << sh);
}

[[noreturn]] void fail(const std::string& msg) {
    std::fprintf(stderr, "error: %s\n", msg.c_str());
    std::exit(3);
}

struct Pending {
    uint64_t ready;   // first cycle the response may be presented
    std::vector<uint8_t> data;
};

struct Options {
    std::string image, out, counters, trace;
    uint64_t prog_base = 0, prog_len = 0, latency = 3, stall = 0, seed = 1;
    uint64_t max_cycles = 50000000, ext_words = 0;
};

uint64_t parse_u64(const char* s, const char* name) {
    char* end = nullptr;
    unsigned long long v = std::strtoull(s, &end, 0);
    if (!*s || *end) fail(std::string("bad number for ") + name + ": " + s);
    return v;
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a.rfind("+verilator", 0) == 0) continue;
        if (i + 1 >= argc) fail("missing value after " + a);
        const char* v = argv[++i];
        if (a == "--image") o.image = v;
        else if (a == "--out") o.out = v;
        else if (a == "--counters") o.counters = v;
        else if (a == "--trace") o.trace = v;
        else if (a == "--prog-base") o.prog_base = parse_u64(v, "--prog-base");
        else if (a == "--prog-len") o.prog_len = parse_u64(v, "--prog-len");
        else if (a == "--latency") o.latency = parse_u64(v, "--latency");
        else if (a == "--stall") o.stall = parse_u64(v, "--stall");
        else if (a == "--seed") o.seed = parse_u64(v, "--seed");
        else if (a == "--max-cycles") o.max_cycles = parse_u64(v, "--max-cycles");
        else if (a == "--ext-words") o.ext_words = parse_u64(v, "--ext-words");
        else fail("unknown option " + a);
    }
    if (o.image.empty() || o.out.empty() || o.counters.empty())
        fail("--image, --out and --counters are required");
    if (o.latency < 1) fail("--latency must be at least 1");
    if (o.stall > 99) fail("--stall is a percentage below 100");
    return o;
}

class Harness {
public:
    explicit Harness(const Options& o) : opt(o), ctx(make_context(o)), top(new TOP_CLASS(ctx.get())) {
        load_image();
        rng = o.seed ? o.seed : 1;
#if VM_TRACE
        if (!opt.trace.empty()) {
#if VM_TRACE_FST
            tfp.reset(new VerilatedFstC);
#else
            tfp.reset(new VerilatedVcdC);
#endif
            top->trace(tfp.get(), 99);
            tfp->open(opt.trace.c_str());
        }
#else
        if (!opt.trace.empty()) fail("this harness was built without --trace");
#endif
    }

    ~Harness() {
#if VM_TRACE
        if (tfp) tfp->close();
#endif
        top->final();
    }

    int run() {
        auto t0 = std::chrono::steady_clock::now();
        top->clk = 0;
        top->rst = 1;
        idle_bus();
        for (int i = 0; i < 4; ++i) tick();
        top->rst = 0;
        tick();
        uint32_t id = bus(false, ID, 0);
        uint32_t config = bus(false, CONFIG, 0);
        bus(true, PROG_BASE, uint32_t(opt.prog_base));
        bus(true, PROG_LEN, uint32_t(opt.prog_len));
        uint64_t start_cycle = cycle;
        bus(true, CTRL, 1);
        uint32_t status = 0;
        bool timeout = false;
        for (;;) {
            status = bus(false, STATUS, 0);
            if (!(status & 1u) && (status & 6u)) break;
            if (cycle - start_cycle > opt.max_cycles) { timeout = true; break; }
        }
        double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        uint64_t sim_cycles = cycle;
        FILE* f = std::fopen(opt.counters.c_str(), "w");
        if (!f) fail("cannot write " + opt.counters);
        std::fprintf(f, "{\"ID\": %u, \"CONFIG\": %u, \"STATUS\": %u, \"PC\": %u, \"CYCLES\": %u, "
                        "\"MAC_CYCLES\": %u, \"STALL_DMA\": %u, \"STALL_WB\": %u, \"INSTRET\": %u, "
                        "\"ARRAY_CYCLES\": %u, ",
                     id, config, status, bus(false, PC, 0), bus(false, CYCLES, 0),
                     bus(false, MAC_CYCLES, 0), bus(false, STALL_DMA, 0), bus(false, STALL_WB, 0),
                     bus(false, INSTRET, 0), bus(false, ARRAY_CYCLES, 0));
        std::fprintf(f, "\"halted\": %d, \"error\": %d, \"error_code\": %u, \"timeout\": %d, "
                        "\"sim_cycles\": %llu, \"wall_s\": %.6f, \"mem_reads\": %llu, "
                        "\"mem_writes\": %llu}\n",
                     int((status >> 1) & 1u), int((status >> 2) & 1u), (status >> 8) & 0xFFu,
                     int(timeout), (unsigned long long)sim_cycles, wall,
                     (unsigned long long)reads, (unsigned long long)writes);
        std::fclose(f);
        save_image();
        return 0;
    }

private:
    static VerilatedContext* make_context(const Options& o) {
        auto* c = new VerilatedContext;
        if (!o.trace.empty()) c->traceEverOn(true);   // before the model is built
        return c;
    }

    Options opt;
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<TOP_CLASS> top;
#if VM_TRACE
#if VM_TRACE_FST
    std::unique_ptr<VerilatedFstC> tfp;
#else
    std::unique_ptr<VerilatedVcdC> tfp;
#endif
#endif
    std::vector<uint8_t> mem;
    uint64_t words = 0, cycle = 0, reads = 0, writes = 0, rng = 1;
    std::deque<Pending> queue;

    void load_image() {
        FILE* f = std::fopen(opt.image.c_str(), "rb");
        if (!f) fail("cannot read " + opt.image);
        std::fseek(f, 0, SEEK_END);
        long size = std::ftell(f);
        std::fseek(f, 0, SEEK_SET);
        if (size < 0 || size % L) fail(opt.image + ": size is not a whole number of words");
        words = uint64_t(size) / L;
        if (opt.ext_words > words) words = opt.ext_words;
        mem.assign(words * L, 0);
        if (size && std::fread(mem.data(), 1, size_t(size), f) != size_t(size)) fail("short read of " + opt.image);
        std::fclose(f);
    }

    void save_image() {
        std::string tmp = opt.out + ".tmp";
        FILE* f = std::fopen(tmp.c_str(), "wb");
        if (!f || std::fwrite(mem.data(), 1, mem.size(), f) != mem.size()) fail("cannot write " + tmp);
        std::fclose(f);
        if (std::rename(tmp.c_str(), opt.out.c_str())) fail("cannot rename " + tmp);
    }

    bool stall_now() {
        if (!opt.stall) return false;
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        return (rng >> 33) % 100 < opt.stall;
    }

    void idle_bus() {
        top->BUS(cyc) = 0;
        top->BUS(stb) = 0;
        top->BUS(we) = 0;
        top->BUS(adr) = 0;
        top->BUS(dat_w) = 0;
    }

    void dump() {
#if VM_TRACE
        if (tfp) tfp->dump(ctx->time());
#endif
    }

    // One clock cycle: present the memory model's outputs, settle, sample the handshakes,
    // rising edge, then update the model.
    void tick() {
        bool rsp_valid = !queue.empty() && queue.front().ready <= cycle;
        top->MEM_RSP(valid) = rsp_valid;
        if (rsp_valid)
            for (int b = 0; b < L; ++b) set_byte(top->MEM_RSP(payload), b, queue.front().data[b]);
        top->MEM_CMD(ready) = !stall_now();
        top->clk = 0;
        top->eval();
        dump();
        ctx->timeInc(1);
        bool cmd_fire = top->MEM_CMD(valid) && top->MEM_CMD(ready);
        bool rsp_fire = rsp_valid && top->MEM_RSP(ready);
        uint64_t addr = 0;
        bool we = false;
        uint8_t data[L];
        uint64_t mask = 0;
        if (cmd_fire) {
            addr = get_bits(top->MEM_CMD(payload), CMD_ADDR, 32);
            we = get_bit(top->MEM_CMD(payload), CMD_WE);
            for (int b = 0; b < L; ++b) data[b] = uint8_t(get_bits(top->MEM_CMD(payload), CMD_DATA + 8 * b, 8));
            mask = get_bits(top->MEM_CMD(payload), CMD_MASK, L);
        }
        top->clk = 1;
        top->eval();
        dump();
        ctx->timeInc(1);
        ++cycle;
        if (rsp_fire) queue.pop_front();
        if (cmd_fire) {
            if (addr >= words) {
                char buf[160];
                std::snprintf(buf, sizeof buf, "ext %s of word %llu outside the %llu-word memory at cycle %llu",
                              we ? "write" : "read", (unsigned long long)addr, (unsigned long long)words,
                              (unsigned long long)cycle);
                fail(buf);
            }
            uint8_t* w = &mem[addr * L];
            if (we) {
                ++writes;
                for (int b = 0; b < L; ++b)
                    if ((mask >> b) & 1u) w[b] = data[b];
            } else {
                ++reads;
                queue.push_back(Pending{cycle + opt.latency - 1, std::vector<uint8_t>(w, w + L)});
            }
        }
    }

    // One Wishbone-classic access: hold cyc/stb until ack, then drop them.
    uint32_t bus(bool write, uint8_t adr, uint32_t value) {
        top->BUS(cyc) = 1;
        top->BUS(stb) = 1;
        top->BUS(we) = write;
        top->BUS(adr) = adr;
        top->BUS(dat_w) = value;
        uint32_t out = 0;
        for (int n = 0;; ++n) {
            tick();
            if (top->BUS(ack)) { out = top->BUS(dat_r); break; }
            if (n > 1000) fail("CSR bus: no ack within 1000 cycles");
        }
        idle_bus();
        return out;
    }
};

}  // namespace

int main(int argc, char** argv) {
    Options o = parse(argc, argv);
    Verilated::commandArgs(argc, argv);
    Harness h(o);
    return h.run();
}
