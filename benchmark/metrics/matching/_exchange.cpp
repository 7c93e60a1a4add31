// Two searches on the matcher's assignment graph: shortest paths on an assignment's exchange graph
// (the inner search of benchmark/metrics/matching/_duals.py's exchange_duals, which has the maths),
// and warm_assignment below, a solve continued from the previous optimum (its maths in its comment).
//
// Built at run time by benchmark/metrics/matching/_exchange.py (c++ -O3 -march=native -shared -fPIC)
// and called through ctypes. Exchange paths: the numpy search relaxes every edge of the changed rows
// per round; here a FIFO queue of rows relaxes each edge as soon as its row's potential changed,
// which needs far fewer relaxations and no temporary arrays. Both converge to the same distances: the
// largest y ≤ the starting values that satisfies every edge (up to tol per relaxation), whatever the
// order.
#include <stdint.h>
#include <stdlib.h>

#include <new>
#include <set>
#include <utility>
#include <vector>

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

// A 4-ary min-heap of columns keyed by dist[], with each column's slot kept so a shorter distance
// moves it up in place (no stale copies to pop). Ties pop the lower column first.
class ColumnHeap {
  public:
    ColumnHeap(long n, const double *dist) : slot_(n, -1), dist_(dist) { items_.reserve(1024); }
    bool empty() const { return items_.empty(); }
    int64_t top() const { return items_[0]; }
    double top_key() const { return dist_[items_[0]]; }
    void push_or_decrease(int64_t j) {  // dist[j] was just lowered (or set)
        if (slot_[j] < 0) {
            slot_[j] = (int64_t)items_.size();
            items_.push_back(j);
        }
        up(slot_[j]);
    }
    int64_t pop() {
        const int64_t j = items_[0];
        slot_[j] = -1;
        const int64_t last = items_.back();
        items_.pop_back();
        if (!items_.empty()) {
            items_[0] = last;
            slot_[last] = 0;
            down(0);
        }
        return j;
    }
    void clear() {
        for (int64_t j : items_) slot_[j] = -1;
        items_.clear();
    }

  private:
    bool before(int64_t a, int64_t b) const { return dist_[a] < dist_[b] || (dist_[a] == dist_[b] && a < b); }
    void up(int64_t at) {
        const int64_t j = items_[at];
        while (at > 0) {
            const int64_t parent = (at - 1) / 4;
            if (!before(j, items_[parent])) break;
            items_[at] = items_[parent];
            slot_[items_[at]] = at;
            at = parent;
        }
        items_[at] = j;
        slot_[j] = at;
    }
    void down(int64_t at) {
        const int64_t j = items_[at];
        const int64_t size = (int64_t)items_.size();
        while (true) {
            const int64_t first = 4 * at + 1;
            if (first >= size) break;
            int64_t best = first;
            for (int64_t c = first + 1; c < std::min(size, first + 4); c++)
                if (before(items_[c], items_[best])) best = c;
            if (!before(items_[best], j)) break;
            items_[at] = items_[best];
            slot_[items_[at]] = at;
            at = best;
        }
        items_[at] = j;
        slot_[j] = at;
    }
    std::vector<int64_t> slot_;
    const double *dist_;
    std::vector<int64_t> items_;
};

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

// Warm-started successive shortest paths for the graph's assignment (maximise Σ x[i, σ(i)], every row
// matched, each column at most once), continued from the previous optimum after entries joined.
//
// The rectangular problem is solved as the square one with n − m dummy rows joined to every column
// with value 0 (a column left free by σ is a dummy's). Duals (max form): s_ij = u_i + v_j − x_ij ≥ 0 on
// every entry, 0 on matched ones; a dummy on column c has u = −v_c, so its entries are feasible exactly
// when v_c is the smallest v. Start: σ and v from the previous optimum on a smaller graph (v ≥ 0, 0 on
// its free columns). Rows with an entry that now violates (s < −tol) lose their column, which becomes
// unmatched (no row, no dummy); free rows get u_i = max_j (x_ij − v_j). Each free row then runs one
// Dijkstra over reduced costs: row → column by s, matched column → its row (or dummy) at 0, ending at
// the first unmatched column popped. A dummy row joins every column j at v_j − v_min: rather than
// relaxing all n columns, a cursor walks the columns in order of v (a std::set kept up to date) and
// offers each at (its dummy column's distance) + v_j − v_min as the heap reaches it. After augmenting
// along the path, columns finalised below the end distance d* gain d* − d_j and rows reached at d_i lose
// d* − d_i, which keeps every s ≥ 0 and makes the path tight (the usual Hungarian update).
//
// row_start/e_cols/e_vals: the graph in CSR (row i's entries [row_start[i], row_start[i+1])). row_col [m]:
// in σ (−1: free), out the optimal σ. v [n]: in the previous column duals, out this solve's. u [m]: out.
// stats_out [3]: rows augmented, entries scanned, dummy cursor steps.
// At least n − m columns σ leaves free must hold the smallest v (within tol; set to it exactly).
// Returns 0 on success; 1 when some row has no augmenting path (the graph has no full matching);
// 2 when memory ran out; 3 when the start is unusable (σ repeats a column, fewer than n − m of its free
// columns hold the smallest v, or m > n): the caller solves from scratch.
int warm_assignment(long m, long n, const int64_t *row_start, const int64_t *e_cols, const double *e_vals,
                    int64_t *row_col, double *u, double *v, double tol, int64_t *stats_out) {
    if (m > n) return 3;
    try {
        const int REAL = 0, DUMMY = 1, OPEN = 2;
        std::vector<int64_t> owner(n, -1);
        std::vector<char> kind(n, DUMMY);
        for (long i = 0; i < m; i++) {
            const int64_t j = row_col[i];
            if (j < 0) continue;
            if (j >= n || owner[j] >= 0) return 3;
            owner[j] = i;
            kind[j] = REAL;
        }
        double vmin = 0.0;
        for (long j = 0; j < n; j++) vmin = (j == 0 || v[j] < vmin) ? v[j] : vmin;
        // n − m of the columns σ leaves free hold the dummies: they need the smallest v. The others are
        // ends for the augmenting paths (a start from a partial σ, e.g. none at all with price estimates).
        long dummies = 0;
        for (long j = 0; j < n; j++) {
            if (kind[j] != DUMMY) continue;
            if (dummies < n - m && v[j] <= vmin + tol) {
                v[j] = vmin;
                dummies++;
            } else {
                kind[j] = OPEN;
            }
        }
        if (dummies < n - m) return 3;
        std::vector<int64_t> free_rows;
        for (long i = 0; i < m; i++) {
            const int64_t j = row_col[i];
            bool keep = false;
            if (j >= 0) {
                for (int64_t e = row_start[i]; e < row_start[i + 1]; e++)
                    if (e_cols[e] == j) { u[i] = e_vals[e] - v[j]; keep = true; break; }
                for (int64_t e = row_start[i]; keep && e < row_start[i + 1]; e++)
                    if (u[i] + v[e_cols[e]] - e_vals[e] < -tol) keep = false;
            }
            if (keep) continue;
            if (j >= 0) {  // its column keeps no row and no dummy: an end for the augmenting paths
                owner[j] = -1;
                kind[j] = OPEN;
                row_col[i] = -1;
            }
            if (row_start[i] == row_start[i + 1]) return 1;
            double best = -1e300;
            for (int64_t e = row_start[i]; e < row_start[i + 1]; e++) best = std::max(best, e_vals[e] - v[e_cols[e]]);
            u[i] = best;
            free_rows.push_back(i);
        }

        // Augmenting row reduction (Jonker & Volgenant): a free row bids for its best column, raising
        // that column's v by the gap to its second best, and evicts the owner, which bids in turn. Each
        // bid keeps every s ≥ 0 and matched entries tight; it settles most rows without a search. Rows
        // whose bid would need a dummy's column, or more than the step budget, go to the searches.
        {
            std::vector<int64_t> queue(free_rows.begin(), free_rows.end()), pending;
            long budget = 16 * (long)queue.size() + 64;
            for (size_t head = 0; head < queue.size(); head++) {
                const int64_t i = queue[head];
                double best = -1e300, second = -1e300;
                int64_t j1 = -1, j2 = -1;
                for (int64_t e = row_start[i]; e < row_start[i + 1]; e++) {
                    const double val = e_vals[e] - v[e_cols[e]];
                    if (val > best) { second = best; j2 = j1; best = val; j1 = e_cols[e]; }
                    else if (val > second) { second = val; j2 = e_cols[e]; }
                }
                if (kind[j1] == OPEN) {
                    row_col[i] = j1; owner[j1] = i; kind[j1] = REAL; u[i] = best;
                    continue;
                }
                if (j2 >= 0 && !(best > second)) {
                    // a tie (duals of an optimum are degenerate: evicted rows often have two tight
                    // entries): take the second column at no increment, as JV do; the budget ends cycles
                    std::swap(j1, j2);
                    if (kind[j1] == OPEN) {
                        row_col[i] = j1; owner[j1] = i; kind[j1] = REAL; u[i] = best;
                        continue;
                    }
                }
                if (kind[j1] != REAL || j2 < 0 || budget-- <= 0) {
                    pending.push_back(i);
                    continue;
                }
                const int64_t evicted = owner[j1];
                v[j1] += best - second;  // 0 after a tie
                u[i] = second;
                row_col[i] = j1; owner[j1] = i;
                row_col[evicted] = -1;
                queue.push_back(evicted);
            }
            for (int64_t i : pending) {  // v moved: the searches need u_i = max_j (x_ij − v_j)
                double best = -1e300;
                for (int64_t e = row_start[i]; e < row_start[i + 1]; e++) best = std::max(best, e_vals[e] - v[e_cols[e]]);
                u[i] = best;
            }
            free_rows.swap(pending);
        }
        // columns in order of v, for the dummy cursor; kept only where there are dummies (m < n)
        const bool has_dummies = n > m;
        std::set<std::pair<double, int64_t>> by_v;
        if (has_dummies)
            for (long j = 0; j < n; j++) by_v.insert({v[j], j});
        const double INF = 1e300;
        std::vector<double> dist(n, INF);
        std::vector<int64_t> pred(n, -1);  // row that reached the column; −2 − c: the dummy of column c
        std::vector<char> done(n, 0);
        std::vector<int64_t> touched, finalised, reached;
        std::vector<double> reached_at;
        ColumnHeap heap(n, dist.data());
        int64_t scanned = 0, cursor_steps = 0;

        for (int64_t root : free_rows) {
            touched.clear(); finalised.clear(); reached.clear(); reached_at.clear();
            heap.clear();
            double hub = INF;  // distance of the first dummy reached, minus its column's v
            int64_t hub_col = -1;
            std::set<std::pair<double, int64_t>>::iterator cursor = by_v.end();
            double cursor_key = INF;  // hub + v of the cursor's column (INF: no cursor)
            auto relax = [&](int64_t j, double nd, int64_t from) {
                if (nd < dist[j]) {
                    if (dist[j] == INF) touched.push_back(j);
                    dist[j] = nd;
                    pred[j] = from;
                    heap.push_or_decrease(j);
                }
            };
            auto scan_row = [&](int64_t i, double d) {
                reached.push_back(i);
                reached_at.push_back(d);
                const double ui = u[i];
                for (int64_t e = row_start[i]; e < row_start[i + 1]; e++) {
                    const int64_t j = e_cols[e];
                    if (done[j]) continue;
                    const double s = ui + v[j] - e_vals[e];
                    relax(j, d + (s > 0 ? s : 0), i);
                }
                scanned += row_start[i + 1] - row_start[i];
            };
            auto advance_cursor = [&]() {
                while (cursor != by_v.end() && done[cursor->second]) ++cursor;
                cursor_key = cursor == by_v.end() ? INF : hub + cursor->first;
            };
            scan_row(root, 0.0);
            int64_t end = -1;
            double dstar = 0.0;
            while (!heap.empty() || cursor_key < INF) {
                if (cursor_key < INF && (heap.empty() || cursor_key < heap.top_key())) {
                    // the dummy cursor: offer the next column in order of v
                    const int64_t j = cursor->second;
                    ++cursor;
                    cursor_steps++;
                    relax(j, cursor_key, -2 - hub_col);
                    advance_cursor();
                    continue;
                }
                const int64_t j = heap.pop();
                if (kind[j] == OPEN) { end = j; dstar = dist[j]; break; }
                done[j] = 1;
                finalised.push_back(j);
                if (kind[j] == REAL) {
                    scan_row(owner[j], dist[j]);
                } else if (hub_col < 0) {  // the first dummy: every column is one dummy step away
                    hub_col = j;
                    hub = dist[j] - v[j];  // the dummy's u is −v_j; v_j is the smallest v
                    cursor = by_v.begin();
                    advance_cursor();
                }
            }
            if (end < 0) {
                for (int64_t j : touched) { dist[j] = INF; pred[j] = -1; done[j] = 0; }
                return 1;
            }
            // duals first (they read the distances), then the augmentation along pred
            for (int64_t j : finalised) {
                if (dist[j] < dstar) {
                    if (has_dummies) by_v.erase({v[j], j});
                    v[j] += dstar - dist[j];
                    if (has_dummies) by_v.insert({v[j], j});
                }
            }
            for (size_t q = 0; q < reached.size(); q++)
                if (reached_at[q] < dstar) u[reached[q]] -= dstar - reached_at[q];
            int64_t j = end;
            while (true) {
                const int64_t p = pred[j];
                if (p >= 0) {
                    const int64_t previous = row_col[p];
                    row_col[p] = j;
                    owner[j] = p;
                    kind[j] = REAL;
                    if (p == root) break;
                    j = previous;
                } else {  // the dummy of column c moves to j; c takes the path's next row
                    const int64_t c = -2 - p;
                    owner[j] = -1;
                    kind[j] = DUMMY;
                    j = c;
                }
            }
            for (int64_t t : touched) { dist[t] = INF; pred[t] = -1; done[t] = 0; }
        }
        stats_out[0] = (int64_t)free_rows.size();  // after the bidding: rows that needed a search
        stats_out[1] = scanned;
        stats_out[2] = cursor_steps;
        return 0;
    } catch (const std::bad_alloc &) {
        return 2;
    }
}

}  // extern "C"

