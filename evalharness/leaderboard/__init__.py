"""The lm-eval bridge: Open LLM leaderboard tasks (YaRN paper, Table 3) on the scaled model object
itself (never reloaded), always with an explicit `max_length`, each task its own `simple_evaluate`
call; offline mirrors of the paper tasks in `tasks/lm-eval/`. Import from the submodules (module
map: ARCHITECTURE.md); this __init__ re-exports nothing.

Protocol: docs/tasks-and-protocols.md#leaderboard
"""
