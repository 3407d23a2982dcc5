"""One-off experiments with their own reports: overload shedding and rollout reloads."""
