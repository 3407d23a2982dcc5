"""Model rollouts: several versions served at once, traffic split, shadow scoring, reloads."""
