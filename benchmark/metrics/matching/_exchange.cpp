// Shortest paths on an assignment's exchange graph: the inner search of
// benchmark/metrics/matching/_duals.py (exchange_duals), which has the maths.
//
// Built at run time by benchmark/metrics/matching/_exchange.py (c++ -O3 -march=native -shared -fPIC)
// and called through ctypes. The numpy search relaxes every edge of the changed rows per round;
// here a FIFO queue of rows relaxes each edge as soon as its row's potential changed, which needs far
// fewer relaxations and no temporary arrays. Both converge to the same distances: the largest y ≤ the
// starting values that satisfies every edge (up to tol per relaxation), whatever the order.
#include <stdint.h>
#include <stdlib.h>

namespace {

// A cycle in the predecessor graph (column j → column σ(pred[j])) is a negative cycle (each of its
// edges was relaxed by more than tol after the one before it). stamp: scratch of n entries.
bool has_predecessor_cycle(long n, const int64_t *row_col, const int64_t *pred, int64_t *stamp) {
    for (long j = 0; j < n; j++) stamp[j] = -1;
    for (long start = 0; start < n; start++) {
        if (stamp[start] != -1) continue;
        long j = start;
        while (j >= 0 && stamp[j] == -1) {
            stamp[j] = start;
            j = pred[j] >= 0 ? (long)row_col[pred[j]] : -1;
        }
        if (j >= 0 && stamp[j] == start) return true;  // came back onto this walk
    }
    return false;
}

}  // namespace

extern "C" {

// Rows 0..m-1 and columns 0..n-1; row_col[i] = σ(i), row_value[i] = c[i, σ(i)]. The known entries of
// row i are e_cols / e_vals [row_start[i], row_start[i+1]). Distances y [n] and predecessor rows pred [n]
// are read as the starting point and written back. start_rows [n_start]: the rows whose potential
// y[σ(i)] + row_value[i] is new (every row for a search from scratch).
// A relaxation through row i sets y[j] = y[σ(i)] + row_value[i] − c_ij when that is below y[j] − tol.
// rounds_out[0] receives the number of rounds (generations of the queue). Returns 0 when the distances
// are final; 1 when the search stopped at a negative cycle: the predecessor graph has a cycle (checked
// every check_every rounds) or the rounds exceed n + 1, and pred is left as it was then; 2 when scratch
// memory could not be allocated.
int exchange_shortest_paths(long m, long n, const int64_t *row_col, const double *row_value,
                            const int64_t *row_start, const int64_t *e_cols, const double *e_vals, double *y,
                            int64_t *pred, const int64_t *start_rows, long n_start, double tol, long check_every,
                            int64_t *rounds_out) {
    int64_t *col_to_row = (int64_t *)malloc(sizeof(int64_t) * (n > 0 ? n : 1));
    int64_t *current = (int64_t *)malloc(sizeof(int64_t) * (m > 0 ? m : 1));
    int64_t *next = (int64_t *)malloc(sizeof(int64_t) * (m > 0 ? m : 1));
    int64_t *stamp = (int64_t *)malloc(sizeof(int64_t) * (n > 0 ? n : 1));
    char *queued = (char *)calloc(m > 0 ? m : 1, 1);
    if (!col_to_row || !current || !next || !stamp || !queued) {
        free(col_to_row); free(current); free(next); free(stamp); free(queued);
        return 2;
    }
    for (long j = 0; j < n; j++) col_to_row[j] = -1;
    for (long i = 0; i < m; i++) col_to_row[row_col[i]] = i;
    long count = 0;
    for (long s = 0; s < n_start; s++) {
        const int64_t i = start_rows[s];
        if (!queued[i]) {
            queued[i] = 1;
            current[count++] = i;
        }
    }
    long rounds = 0;
    int result = 0;
    while (count) {
        rounds++;
        long queued_next = 0;
        for (long q = 0; q < count; q++) {
            const int64_t i = current[q];
            queued[i] = 0;  // a later change of its potential queues it again
            const double pot = y[row_col[i]] + row_value[i];
            for (int64_t e = row_start[i]; e < row_start[i + 1]; e++) {
                const int64_t j = e_cols[e];
                const double through = pot - e_vals[e];
                if (through < y[j] - tol) {
                    y[j] = through;
                    pred[j] = i;
                    const int64_t r = col_to_row[j];
                    if (r >= 0 && !queued[r]) {
                        queued[r] = 1;
                        next[queued_next++] = r;
                    }
                }
            }
        }
        int64_t *swap = current;
        current = next;
        next = swap;
        count = queued_next;
        if (count && (rounds > n + 1 || (check_every > 0 && rounds % check_every == 0 &&
                                         has_predecessor_cycle(n, row_col, pred, stamp)))) {
            result = 1;
            break;
        }
    }
    free(col_to_row); free(current); free(next); free(stamp); free(queued);
    rounds_out[0] = rounds;
    return result;
}

}  // extern "C"
