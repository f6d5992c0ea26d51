"""What runs at a data owner: the party kernel, catalog, policy, audit, data sources,
owner-side evaluation, and the MPC worker with its secure computation."""
