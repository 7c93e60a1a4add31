"""The static leaderboard: renders the results store, the manifests and the tasks' metadata into an
offline HTML site (``canonbench leaderboard build``). It formats stored rows and stored summaries; it
never computes a metric and never imports a task module by name (plots and summaries are declared in
each task's metadata).

Modules: :mod:`.collect` (what the pages show), :mod:`.cells` (how a value is shown), :mod:`.plots`
(SVG per declared plot kind), :mod:`.pages` (the three page kinds), :mod:`.write` (the files),
:mod:`.build` (the entry point)."""
