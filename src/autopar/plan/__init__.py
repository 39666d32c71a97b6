"""The search: candidate strategies (space.py, from the techniques' dimensions), the planner
(planner.py), its records (result.py), technique families (families.py) and the
explanations of why plan 1 won and why every other family lost (explain.py)."""
