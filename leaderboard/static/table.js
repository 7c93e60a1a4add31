/* CanonBench leaderboard: sortable and filterable tables, copy buttons. Plain JS, no network,
   works from file://. A header click sorts by that column (again: reverses); numeric columns sort by
   each cell's data-sort value; empty cells ("not run", "n/a") always sort last. */
(function () {
  "use strict";

  function cellKey(row, index, numeric) {
    var cell = row.cells[index];
    if (!cell) return null;
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : (numeric ? "" : cell.textContent.trim());
    if (raw === "") return null;
    if (numeric) {
      var value = parseFloat(raw);
      return isNaN(value) ? null : value;
    }
    return raw.toLowerCase();
  }

  function sortTable(table, index, th) {
    var numeric = th.getAttribute("data-type") === "num";
    var current = th.getAttribute("aria-sort");
    // First click: numbers high-to-low (a ranking), text A-Z; a second click reverses.
    var descending = current ? current === "ascending" : numeric;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (row, i) { row._order = i; });
    rows.sort(function (a, b) {
      var ka = cellKey(a, index, numeric), kb = cellKey(b, index, numeric);
      if (ka === null && kb === null) return a._order - b._order;
      if (ka === null) return 1;
      if (kb === null) return -1;
      var cmp = ka < kb ? -1 : ka > kb ? 1 : 0;
      if (cmp === 0) return a._order - b._order;
      return descending ? -cmp : cmp;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }

  function filterTable(input) {
    var table = document.getElementById(input.getAttribute("data-table"));
    if (!table) return;
    var needle = input.value.trim().toLowerCase();
    var shown = 0, total = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      total += 1;
      var match = needle === "" || row.textContent.toLowerCase().indexOf(needle) !== -1;
      row.hidden = !match;
      if (match) shown += 1;
    });
    var counter = document.querySelector('[data-count-for="' + table.id + '"]');
    if (counter) counter.textContent = needle === "" ? total + " rows" : shown + " of " + total + " rows";
  }

  function copyText(id, button) {
    var area = document.getElementById(id);
    if (!area) return;
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(area.value).then(done, function () { area.select(); document.execCommand("copy"); done(); });
    } else {
      area.select();
      document.execCommand("copy");
      done();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
      if (!table.tHead) return;
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
        th.classList.add("sort-header");
        th.tabIndex = 0;
        th.addEventListener("click", function (event) {
          if (event.target.closest("a")) return; // the task-page link inside a header
          sortTable(table, index, th);
        });
        th.addEventListener("keydown", function (event) {
          if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortTable(table, index, th); }
        });
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll("input.table-filter"), function (input) {
      input.addEventListener("input", function () { filterTable(input); });
    });
    Array.prototype.forEach.call(document.querySelectorAll("button.copy"), function (button) {
      button.addEventListener("click", function () { copyText(button.getAttribute("data-copy"), button); });
    });
  });
})();
