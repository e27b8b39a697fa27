// Behavioural 16-bit SDR SDRAM for board_harness.cpp (BoardTop(memory="sdram")): the C++
// twin of tb/sdram_model.py, with the same rules checked at every clock edge (a violation ends
// the harness with one "error: edge N: ..." line). Geometry and timing in cycles come from
// board_config.h (written by sim/backends.py from the controller's own parameters):
// SDRAM_ROWS, SDRAM_COLS, SDRAM_BANKS, SDRAM_INIT_CYCLES, SDRAM_INIT_REFRESH, SDRAM_REFI,
// T_RCD, T_RP, T_RAS, T_RC, T_RRD, T_RFC, T_WR, T_MRD.
//
// Edge convention (as the Python model, the board's inverted SDRAM clock): the model sees the
// registered pins at the next system edge t; read data of a READ at edge t is sampled by the
// controller at edge t + CL - 1 (driven from just after edge t + CL - 2).
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#define SD(x) sdram___05F##x

// board_harness.cpp defines fail(message) (print "error: message", exit 3) before including this.

class SdramModel {
public:
    SdramModel() : cells(size_t(SDRAM_BANKS) * SDRAM_ROWS * SDRAM_COLS, 0) {
        for (int b = 0; b < SDRAM_BANKS; ++b) {
            open_row[b] = -1;
            last_act[b] = last_pre[b] = last_wr[b] = -1000000;
        }
    }

    uint64_t commands = 0, refreshes = 0;

    // Before the rising edge: apply what the chip drives for this edge (decided at the last one).
    template <typename Top> void drive_dq(Top& top) { top.SD(dq_i) = drive_next; }

    // At the rising edge (called with the pins as registered after the previous edge).
    template <typename Top> void sample(Top& top, uint64_t) {
        ++edge;
        int cs = top.SD(cs), ras = top.SD(ras), cas = top.SD(cas), we = top.SD(we);
        int ba = top.SD(ba), a = top.SD(a), dqm = top.SD(dqm), oe = top.SD(dq_oe);
        uint16_t dq = top.SD(dq_o);
        if (!top.SD(clk_en)) violation("CKE low");
        auto due = drive.find(edge);
        bool chip_drives = due != drive.end();
        if (chip_drives) drive.erase(due);
        if (oe && (chip_drives || drove_last)) violation("bus contention: the controller drives DQ while read data is due");
        drove_last = chip_drives;
        int c = cs ? (ras << 2 | cas << 1 | we) : 0;
        static const char* names[] = {"NOP", "BURST TERMINATE", "READ", "WRITE", "ACTIVE",
                                      "PRECHARGE", "REFRESH", "MODE"};
        cmd_name = names[c];
        if (c) ++commands;
        if (c == 0) {
        } else if (edge <= SDRAM_INIT_CYCLES) {
            violation("command during the power-up pause");
        } else if (cl == 0 && (c == 4 || c == 2 || c == 3)) {
            violation("before the initialization (MODE REGISTER SET) is complete");
        } else if (c == 1) {
            violation("unsupported command");
        } else if (c == 7) {
            if (any_open()) violation("MODE REGISTER SET with open banks");
            if (init_refreshes < SDRAM_INIT_REFRESH) violation("MODE REGISTER SET before the initial AUTO REFRESHes");
            need(last_pre_any, T_RP, "tRP");
            need(last_ref, T_RFC, "tRFC");
            if (a & 0x38F || ((a >> 4) & 7) < 2 || ((a >> 4) & 7) > 3) violation("unsupported mode " + std::to_string(a));
            cl = (a >> 4) & 7;
            mode_edge = last_mrs = int64_t(edge);
        } else if (c == 6) {
            if (any_open()) violation("REFRESH with open banks");
            need(last_pre_any, T_RP, "tRP");
            need(last_ref, T_RFC, "tRFC");
            for (int b = 0; b < SDRAM_BANKS; ++b) need(last_act[b], T_RC, "tRC (ACTIVE to REFRESH)");
            last_ref = int64_t(edge);
            if (cl) ++refreshes; else ++init_refreshes;
        } else if (c == 5) {
            bool all = (a >> 10) & 1;
            if (!cl && !all) violation("the initialization starts with PRECHARGE ALL");
            for (int b = 0; b < SDRAM_BANKS; ++b) {
                if (!(all || b == ba) || open_row[b] < 0) continue;
                need(last_act[b], T_RAS, "tRAS");
                need(last_wr[b], T_WR, "tWR");
                open_row[b] = -1;
                last_pre[b] = int64_t(edge);
            }
            last_pre_any = int64_t(edge);
        } else if (c == 4) {
            if (open_row[ba] >= 0) violation("ACTIVE on a bank with an open row");
            if (a >= SDRAM_ROWS) violation("row beyond the chip");
            need(last_pre[ba], T_RP, "tRP");
            need(last_act[ba], T_RC, "tRC");
            need(last_act_any, T_RRD, "tRRD");
            need(last_ref, T_RFC, "tRFC");
            need(last_mrs, T_MRD, "tMRD");
            open_row[ba] = a;
            last_act[ba] = last_act_any = int64_t(edge);
        } else {   // READ 2, WRITE 3
            if (open_row[ba] < 0) violation("READ/WRITE on a bank without an open row");
            if ((a >> 10) & 1) violation("auto precharge is not expected");
            int col = a & 0x3FF;
            if (col >= SDRAM_COLS) violation("column beyond the chip");
            need(last_act[ba], T_RCD, "tRCD");
            uint16_t& cell = cells[(size_t(ba) * SDRAM_ROWS + size_t(open_row[ba])) * SDRAM_COLS + col];
            if (c == 3) {
                if (!drive.empty() && drive.rbegin()->first >= edge)
                    violation("WRITE while read data is due (it would truncate the READ)");
                if (!oe) violation("WRITE without data on DQ");
                uint16_t keep = uint16_t((dqm & 1 ? 0x00FF : 0) | (dqm & 2 ? 0xFF00 : 0));
                cell = uint16_t((cell & keep) | (dq & ~keep));
                last_wr[ba] = int64_t(edge);
            } else {
                if (dqm) violation("READ with DQM set");
                if (drive.count(edge + cl - 1)) violation("two reads due at the same edge");
                drive[edge + cl - 1] = cell;
            }
        }
        if (mode_edge >= 0) {
            int64_t behind = (int64_t(edge) - mode_edge) / SDRAM_REFI - 1 - int64_t(refreshes);
            if (behind > 0) { cmd_name = "REFRESH"; violation("refresh fell behind tREFI"); }
        }
        auto next = drive.find(edge + 1);
        drive_next = next == drive.end() ? 0 : next->second;
    }

private:
    std::vector<uint16_t> cells;
    std::map<uint64_t, uint16_t> drive;     // edge -> value on DQ at that edge
    uint16_t drive_next = 0;
    bool drove_last = false;
    uint64_t edge = 0;
    int cl = 0;
    int open_row[SDRAM_BANKS];
    int64_t last_act[SDRAM_BANKS], last_pre[SDRAM_BANKS], last_wr[SDRAM_BANKS];
    int64_t last_act_any = -1000000, last_pre_any = -1000000, last_ref = -1000000,
            last_mrs = -1000000, mode_edge = -1;
    uint64_t init_refreshes = 0;
    const char* cmd_name = "";

    bool any_open() const {
        for (int b = 0; b < SDRAM_BANKS; ++b) if (open_row[b] >= 0) return true;
        return false;
    }
    void need(int64_t since, int cycles, const char* rule) {
        if (int64_t(edge) - since < cycles)
            violation(std::string(rule) + ": " + std::to_string(int64_t(edge) - since) +
                      " cycles, needs " + std::to_string(cycles));
    }
    [[noreturn]] void violation(const std::string& rule) {
        fail("SDRAM rule broken at edge " + std::to_string(edge) + ": " + cmd_name + ": " + rule);
    }
};
