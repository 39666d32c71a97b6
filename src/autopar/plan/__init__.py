"""The search: candidate strategies (space), stage layout (cost.pipeline), ranking and
explanations (planner, explain)."""
