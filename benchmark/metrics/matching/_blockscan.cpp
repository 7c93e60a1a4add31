// One read of each block of kernel values for the matcher's passes (benchmark/metrics/matching/_passes.py):
// - the candidate pass (row_pass), which torch did as five full sweeps of the block (argmax, masked
//   max, shift, top-k, column ranking);
// - threshold passes: the entries above each row's threshold, known entries left out, at most cap.
// Blocks hold fp32 (fp32 kernels), bf16 (bf16 kernels, read as fp32) or int32 (exact sums of int8 codes,
// with shifts on the integer grid). Same arithmetic, same results: t = value − shift[j] and t − best_i
// are the same fp32 or int32 subtractions torch makes; ties keep the lower column (rows) or the earlier
// row (columns).
//
// Built at run time by benchmark/metrics/matching/_blockscan.py (c++ -O3 -march=native -shared -fPIC
// -pthread) and called through ctypes, on up to `threads` threads: rows are split for the row
// results, then columns for the column ranking (each column's running list has one owner).
#include <stdint.h>

#include <algorithm>
#include <functional>
#include <cstring>
#include <limits>
#include <atomic>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

namespace {

template <typename T>
struct Entry {
    T value;
    int64_t col;
};

// a before b in the output: larger value, then lower column
template <typename T>
inline bool ahead(const Entry<T> &a, const Entry<T> &b) {
    return a.value > b.value || (a.value == b.value && a.col < b.col);
}

// below every value: −inf for fp32; for int32 the marker torch's path uses for "nothing" (INT32_MIN)
template <typename T>
inline T lowest() {
    return std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::min();
}

// Blocks are stored as fp32, int32 or bf16; bf16 values are read as the fp32 numbers they are (the
// upper half of an fp32 bit pattern: exact), as torch's conversion gives them.
struct bf16 {
    uint16_t bits;
};
inline float load(const float *p) { return *p; }
inline int32_t load(const int32_t *p) { return *p; }
inline float load(const bf16 *p) {
    const uint32_t wide = (uint32_t)p->bits << 16;
    float value;
    std::memcpy(&value, &wide, sizeof value);
    return value;
}

// The threshold scan and the column ranking test entries a chunk at a time with a branch-free OR of
// comparisons (vectorised): only a chunk holding an entry above the running threshold (the heap's
// smallest t, a column's last listed value) is walked one entry at a time, in order, as a plain loop
// would. The candidate scan ranks chunk maxima instead (scan_rows).
const long CHUNK = 64;

// Row i's top `cap` by t = value − shift[j] in two reads of the row (it sits in cache after the first).
// The row's columns fall into `chunks` strided sets, chunk c = {c, c + chunks, c + 2·chunks, …}, so the
// first read is an element-wise running maximum over consecutive stretches of the row (vectorised, no
// reduction across lanes):
// 1. the maximum of t (and of the raw value) in each chunk;
// 2. F = the cap-th largest chunk maximum. At least cap entries (one per chunk) have t ≥ F, so every
//    entry of the top cap has t ≥ F and lies in a chunk whose maximum is ≥ F: only those ~cap chunks
//    are walked, and only their entries with t ≥ F are ranked (larger value, then lower column).
// A running heap over the row instead walks most of the row one entry at a time while its floor is
// still low.
template <typename In, typename T, bool RAW>
void scan_rows(const In *block, long n, const T *shift, long cap, long lo, long hi, T *top_val,
               int64_t *top_col, T *raw_val, int64_t *raw_col) {
    // cap·8 chunks, of at most 64 entries: the walk reads ~cap·n/chunks entries and nth_element ranks the
    // chunks, and a row's fixed costs grow with the chunks (a block of 2048 columns with cap 1 took 0.038 s
    // at 256 chunks, 0.013 s at 32)
    const long chunks = std::min(n, (std::max(cap * 8, n / 64) + 15) / 16 * 16);
    std::vector<T> chunk_t(chunks), chunk_raw(RAW ? chunks : 0), floor_pick(chunks);
    std::vector<Entry<T>> found;
    found.reserve(4 * cap + 64);
    for (long i = lo; i < hi; i++) {
        const In *row = block + i * n;
        std::fill(chunk_t.begin(), chunk_t.end(), lowest<T>());
        if (RAW) std::fill(chunk_raw.begin(), chunk_raw.end(), lowest<T>());
        T *ct = chunk_t.data();
        T *cr = chunk_raw.data();
        for (long s = 0; s < n; s += chunks) {
            const long width = std::min(chunks, n - s);
            const In *part = row + s;
            const T *sh = shift + s;
            for (long c = 0; c < width; c++) {
                const T x = load(part + c);
                const T t = x - sh[c];
                ct[c] = t > ct[c] ? t : ct[c];
                if (RAW) cr[c] = x > cr[c] ? x : cr[c];
            }
        }
        T floor_t = lowest<T>();
        if (chunks > cap) {
            std::copy(chunk_t.begin(), chunk_t.end(), floor_pick.begin());
            std::nth_element(floor_pick.begin(), floor_pick.begin() + (cap - 1), floor_pick.end(), std::greater<T>());
            floor_t = floor_pick[cap - 1];
        }
        found.clear();
        for (long c = 0; c < chunks; c++) {
            if (!(ct[c] >= floor_t)) continue;
            for (long j = c; j < n; j += chunks) {
                const T t = load(row + j) - shift[j];
                if (t >= floor_t) found.push_back({t, j});
            }
        }
        // found holds at least cap entries (one per chunk at or above F, or the whole row; cap ≤ n) unless
        // the row holds NaN, which compares false everywhere: then the missing places read "nothing"
        const long keep = std::min(cap, (long)found.size());
        std::partial_sort(found.begin(), found.begin() + keep, found.end(), ahead<T>);
        for (long q = 0; q < cap; q++) {
            top_val[i * cap + q] = q < keep ? found[q].value : lowest<T>();
            top_col[i * cap + q] = q < keep ? found[q].col : 0;
        }
        if (RAW) {
            // the largest raw value b1, the first column holding it, and the second largest b2 (a repeat of
            // the largest counts): from the chunk maxima, walking only the chunks that hold b1
            T b1 = cr[0];
            for (long c = 1; c < chunks; c++) b1 = cr[c] > b1 ? cr[c] : b1;
            T b2 = lowest<T>();
            int64_t j1 = n;
            long holders = 0;
            for (long c = 0; c < chunks; c++) {
                if (cr[c] == b1) {
                    holders++;
                    bool seen = false;  // a second b1 in the same chunk makes b2 = b1
                    for (long j = c; j < n; j += chunks) {
                        const T x = load(row + j);
                        if (x == b1) {
                            if (seen) b2 = b1;
                            seen = true;
                            if (j < j1) j1 = j;
                        } else if (x > b2) {
                            b2 = x;
                        }
                    }
                } else if (cr[c] > b2) {
                    b2 = cr[c];
                }
            }
            if (holders > 1) b2 = b1;
            raw_val[2 * i] = b1;
            raw_val[2 * i + 1] = b2;
            raw_col[i] = j1 < n ? j1 : 0;
        }
    }
}

template <typename In, typename T>
void rank_columns(const In *block, long r, long n, const T *shift, const T *best, long count,
                  long first_row, long lo, long hi, T *col_val, int64_t *col_row) {
    const T *floor_c = col_val + (count - 1) * n;  // each column's last listed value
    for (long i = 0; i < r; i++) {
        const In *row = block + i * n;
        const T b = best[i];
        for (long j = lo; j < hi; j += CHUNK) {
            const long end = std::min(hi, j + CHUNK);
            int hit = 0;
            for (long k = j; k < end; k++) hit |= ((load(row + k) - shift[k]) - b) > floor_c[k];
            if (!hit) continue;
            for (long k = j; k < end; k++) {
                const T c = (load(row + k) - shift[k]) - b;
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

// Rows [lo, hi) of a threshold pass: entries with t = value − shift[j] > thr[i], known entries (the
// ascending columns known_idx[known_ptr[i] .. known_ptr[i + 1]]) left out. A row with more than `cap` such
// entries keeps its `cap` largest (larger value, then lower column first) and reports the (cap+1)-th
// value in ref[i] (over[i] = 1); other rows keep all of theirs (over[i] = 0).
template <typename In, typename T>
void threshold_rows(const In *block, long n, const T *shift, const T *thr, long cap, const int64_t *known_ptr,
                    const int64_t *known_idx, long lo, long hi, int64_t *out_col, T *out_t, int64_t *out_count,
                    T *ref, uint8_t *over) {
    std::vector<Entry<T>> heap;  // the cap + 1 largest so far, min-heap by `ahead`
    heap.reserve(cap + 1);
    auto worse = [](const Entry<T> &a, const Entry<T> &b) { return ahead(a, b); };
    for (long i = lo; i < hi; i++) {
        const In *row = block + i * n;
        const T limit = thr[i];
        const int64_t *known = known_idx + known_ptr[i];
        const int64_t *known_end = known_idx + known_ptr[i + 1];
        heap.clear();
        for (long j = 0; j < n; j += CHUNK) {
            const long end = std::min(n, j + CHUNK);
            // the running floor: the threshold, or the heap's smallest once it holds cap + 1 entries
            const T floor_t = (long)heap.size() > cap ? heap.front().value : limit;
            int hit = 0;
            for (long k = j; k < end; k++) hit |= (load(row + k) - shift[k]) > floor_t;
            if (!hit) continue;
            for (long k = j; k < end; k++) {
                const T t = load(row + k) - shift[k];
                if (!(t > limit)) continue;
                while (known != known_end && *known < k) known++;
                if (known != known_end && *known == k) continue;
                if ((long)heap.size() <= cap) {
                    heap.push_back({t, k});
                    std::push_heap(heap.begin(), heap.end(), worse);
                } else if (t > heap.front().value) {
                    std::pop_heap(heap.begin(), heap.end(), worse);
                    heap.back() = {t, k};
                    std::push_heap(heap.begin(), heap.end(), worse);
                }
            }
        }
        std::sort(heap.begin(), heap.end(), ahead<T>);
        long kept = (long)heap.size();
        over[i] = kept > cap;
        if (kept > cap) {
            ref[i] = heap[cap].value;
            kept = cap;
        } else {
            ref[i] = limit;
        }
        out_count[i] = kept;
        for (long q = 0; q < kept; q++) {
            out_col[i * cap + q] = heap[q].col;
            out_t[i * cap + q] = heap[q].value;
        }
    }
}

// rows [0, total) split into up to `threads` ranges, one thread each; a thread that cannot start runs inline
template <typename Work>
void split_rows(long total, long threads, Work &&work) {
    std::atomic<bool> failed(false);
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
}

// see candidate_block below; T is the block's value type
template <typename In, typename T>
int scan_block(const In *block, long r, long n, const T *shift, long cap, T *top_val, int64_t *top_col, T *raw_val,
               int64_t *raw_col, long count, T *col_val, int64_t *col_row, long first_row, long threads) {
    if (r <= 0) return 0;
    try {
        split_rows(r, threads, [&](long lo, long hi) {
            if (raw_val) scan_rows<In, T, true>(block, n, shift, cap, lo, hi, top_val, top_col, raw_val, raw_col);
            else scan_rows<In, T, false>(block, n, shift, cap, lo, hi, top_val, top_col, raw_val, raw_col);
        });
        if (count <= 0) return 0;
        std::vector<T> best(r);
        for (long i = 0; i < r; i++) best[i] = top_val[i * cap];
        split_rows(n, threads, [&](long lo, long hi) {
            rank_columns<In, T>(block, r, n, shift, best.data(), count, first_row, lo, hi, col_val, col_row);
        });
        return 0;
    } catch (const std::bad_alloc &) {
        return 2;
    }
}

// see threshold_block below; In is the block's storage type, T its value type
template <typename In, typename T>
int threshold_scan(const In *block, long r, long n, const T *shift, const T *thr, long cap, const int64_t *known_ptr,
                   const int64_t *known_idx, int64_t *out_col, T *out_t, int64_t *out_count, T *ref, uint8_t *over,
                   long threads) {
    try {
        split_rows(r, threads, [&](long lo, long hi) {
            threshold_rows<In, T>(block, n, shift, thr, cap, known_ptr, known_idx, lo, hi, out_col, out_t, out_count,
                                  ref, over);
        });
        return 0;
    } catch (const std::bad_alloc &) {
        return 2;
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
    return scan_block<float, float>(block, r, n, shift, cap, top_val, top_col, raw_val, raw_col, count, col_val,
                                    col_row, first_row, threads);
}

// The same for bf16 blocks (bf16 kernels: torch's bf16 products, read as fp32), fp32 shifts and results.
int candidate_block_bf16(const bf16 *block, long r, long n, const float *shift, long cap, float *top_val,
                         int64_t *top_col, float *raw_val, int64_t *raw_col, long count, float *col_val,
                         int64_t *col_row, long first_row, long threads) {
    return scan_block<bf16, float>(block, r, n, shift, cap, top_val, top_col, raw_val, raw_col, count, col_val,
                                   col_row, first_row, threads);
}

// The same for int32 values and shifts (int8 kernels): INT32_MIN stands for −inf (the second raw value
// when n = 1, and the start of the running column lists). The caller keeps |value| + |shift| far from
// int32 overflow, as torch's path needs too.
int candidate_block_i32(const int32_t *block, long r, long n, const int32_t *shift, long cap, int32_t *top_val,
                        int64_t *top_col, int32_t *raw_val, int64_t *raw_col, long count, int32_t *col_val,
                        int64_t *col_row, long first_row, long threads) {
    return scan_block<int32_t, int32_t>(block, r, n, shift, cap, top_val, top_col, raw_val, raw_col, count, col_val,
                                        col_row, first_row, threads);
}

// A threshold pass over a block [r, n] (see threshold_rows): thr [r], known_ptr [r + 1] (offsets into
// known_idx, ascending columns per row); out_col / out_t [r, cap], out_count / ref / over [r]. Blocks,
// shifts, thresholds and results as for the candidate scans. Returns 0, or 2 when memory ran out.
int threshold_block(const float *block, long r, long n, const float *shift, const float *thr, long cap,
                    const int64_t *known_ptr, const int64_t *known_idx, int64_t *out_col, float *out_t,
                    int64_t *out_count, float *ref, uint8_t *over, long threads) {
    return threshold_scan<float, float>(block, r, n, shift, thr, cap, known_ptr, known_idx, out_col, out_t, out_count,
                                        ref, over, threads);
}

int threshold_block_bf16(const bf16 *block, long r, long n, const float *shift, const float *thr, long cap,
                         const int64_t *known_ptr, const int64_t *known_idx, int64_t *out_col, float *out_t,
                         int64_t *out_count, float *ref, uint8_t *over, long threads) {
    return threshold_scan<bf16, float>(block, r, n, shift, thr, cap, known_ptr, known_idx, out_col, out_t, out_count,
                                       ref, over, threads);
}

int threshold_block_i32(const int32_t *block, long r, long n, const int32_t *shift, const int32_t *thr, long cap,
                        const int64_t *known_ptr, const int64_t *known_idx, int64_t *out_col, int32_t *out_t,
                        int64_t *out_count, int32_t *ref, uint8_t *over, long threads) {
    return threshold_scan<int32_t, int32_t>(block, r, n, shift, thr, cap, known_ptr, known_idx, out_col, out_t,
                                            out_count, ref, over, threads);
}

}  // extern "C"
