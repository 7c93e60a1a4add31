// One pass over a block of fp32 kernel values for the matcher's candidate pass: the per-row work of
// benchmark/metrics/matching/_passes.py (row_pass) that torch did as five full sweeps of the block
// (argmax, masked max, shift, top-k, column ranking), here in one read of each row while it is in
// cache. Same arithmetic, same results: t = value − shift[j] and t − best_i are the same fp32
// subtractions torch makes, ties keep the lower column (rows) or the earlier row (columns).
//
// Built at run time by benchmark/metrics/matching/_blockscan.py (c++ -O3 -march=native -shared -fPIC
// -pthread) and called through ctypes, on up to `threads` threads: rows are split for the row
// results, then columns for the column ranking (each column's running list has one owner).
#include <math.h>
#include <stdint.h>

#include <algorithm>
#include <atomic>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

namespace {

struct Entry {
    float value;
    int64_t col;
};

// a before b in the output: larger value, then lower column
inline bool ahead(const Entry &a, const Entry &b) { return a.value > b.value || (a.value == b.value && a.col < b.col); }

// Entries are tested a chunk at a time with a branch-free OR of comparisons (vectorised): only a chunk
// holding an entry above the running thresholds (the row's second-largest value, the heap's smallest
// t, a column's last listed value) is walked one entry at a time, in order, as a plain loop would.
const long CHUNK = 64;

template <bool RAW>
void scan_rows(const float *block, long n, const float *shift, long cap, long lo, long hi, float *top_val,
               int64_t *top_col, float *raw_val, int64_t *raw_col) {
    std::vector<Entry> heap;  // min-heap by `ahead`: heap.front() is the entry leaving first
    heap.reserve(cap);
    auto worse = [](const Entry &a, const Entry &b) { return ahead(a, b); };
    for (long i = lo; i < hi; i++) {
        const float *row = block + i * n;
        float b1 = -INFINITY, b2 = -INFINITY;
        int64_t j1 = 0;
        heap.clear();
        auto visit = [&](long j) {
            const float x = row[j];
            if (RAW) {
                if (x > b1) { b2 = b1; b1 = x; j1 = j; }
                else if (x > b2) b2 = x;
            }
            const float t = x - shift[j];
            if ((long)heap.size() < cap) {
                heap.push_back({t, j});
                std::push_heap(heap.begin(), heap.end(), worse);
            } else if (t > heap.front().value) {  // a later column never displaces an equal value
                std::pop_heap(heap.begin(), heap.end(), worse);
                heap.back() = {t, j};
                std::push_heap(heap.begin(), heap.end(), worse);
            }
        };
        long j = 0;
        for (; j < n && (long)heap.size() < cap; j++) visit(j);
        for (; j < n; j += CHUNK) {
            const long end = std::min(n, j + CHUNK);
            const float floor_t = heap.front().value;
            int hit = 0;
            if (RAW) {
                for (long k = j; k < end; k++) hit |= (row[k] > b2) | ((row[k] - shift[k]) > floor_t);
            } else {
                for (long k = j; k < end; k++) hit |= (row[k] - shift[k]) > floor_t;
            }
            if (!hit) continue;
            for (long k = j; k < end; k++) visit(k);
        }
        if (RAW) {
            raw_val[2 * i] = b1;
            raw_val[2 * i + 1] = b2;
            raw_col[i] = j1;
        }
        std::sort(heap.begin(), heap.end(), ahead);
        for (long q = 0; q < cap; q++) {
            top_val[i * cap + q] = heap[q].value;
            top_col[i * cap + q] = heap[q].col;
        }
    }
}

void rank_columns(const float *block, long r, long n, const float *shift, const float *best, long count,
                  long first_row, long lo, long hi, float *col_val, int64_t *col_row) {
    const float *floor_c = col_val + (count - 1) * n;  // each column's last listed value
    for (long i = 0; i < r; i++) {
        const float *row = block + i * n;
        const float b = best[i];
        for (long j = lo; j < hi; j += CHUNK) {
            const long end = std::min(hi, j + CHUNK);
            int hit = 0;
            for (long k = j; k < end; k++) hit |= ((row[k] - shift[k]) - b) > floor_c[k];
            if (!hit) continue;
            for (long k = j; k < end; k++) {
                const float c = (row[k] - shift[k]) - b;
                if (!(c > floor_c[k])) continue;  // an equal value keeps the earlier row
                long q = count - 1;
                while (q > 0 && c > col_val[(q - 1) * n + k]) {
                    col_val[q * n + k] = col_val[(q - 1) * n + k];
                    col_row[q * n + k] = col_row[(q - 1) * n + k];
                    q--;
                }
                col_val[q * n + k] = c;
                col_row[q * n + k] = first_row + i;
            }
        }
    }
}

}  // namespace

extern "C" {

// block [r, n] row-major fp32 kernel values; shift [n] fp32; cap ≤ n. Writes top_val / top_col [r, cap]
// (t = value − shift, largest first) and, when raw_val is not null, raw_val [r, 2] (the two largest
// values before the shift; the second is −inf when n = 1) and raw_col [r] (the first column holding the
// largest). When count > 0, col_val / col_row [count, n] are running lists (largest first; start them
// at −inf) of each column's largest t − t_best(row) over the rows seen, merged with this block's rows
// (numbered from first_row). Returns 0, or 2 when memory ran out.
int candidate_block(const float *block, long r, long n, const float *shift, long cap, float *top_val,
                    int64_t *top_col, float *raw_val, int64_t *raw_col, long count, float *col_val,
                    int64_t *col_row, long first_row, long threads) {
    if (r <= 0) return 0;
    try {
        // ranges [lo, hi) of `total` on up to `threads` threads; a thread that cannot start runs inline
        std::atomic<bool> failed(false);
        auto split = [threads, &failed](long total, auto &&work) {
            const long parts = std::max(1L, std::min(threads, total));
            const long share = (total + parts - 1) / parts;
            std::vector<std::thread> pool;
            for (long lo = share; lo < total; lo += share) {
                const long hi = std::min(total, lo + share);
                try {
                    pool.emplace_back([&work, &failed, lo, hi] {
                        try { work(lo, hi); } catch (const std::bad_alloc &) { failed = true; }
                    });
                } catch (const std::system_error &) {
                    work(lo, hi);
                }
            }
            work(0, std::min(total, share));
            for (auto &th : pool) th.join();
            if (failed) throw std::bad_alloc();
        };
        split(r, [&](long lo, long hi) {
            if (raw_val) scan_rows<true>(block, n, shift, cap, lo, hi, top_val, top_col, raw_val, raw_col);
            else scan_rows<false>(block, n, shift, cap, lo, hi, top_val, top_col, raw_val, raw_col);
        });
        if (count <= 0) return 0;
        std::vector<float> best(r);
        for (long i = 0; i < r; i++) best[i] = top_val[i * cap];
        split(n, [&](long lo, long hi) {
            rank_columns(block, r, n, shift, best.data(), count, first_row, lo, hi, col_val, col_row);
        });
        return 0;
    } catch (const std::bad_alloc &) {
        return 2;
    }
}

}  // extern "C"
