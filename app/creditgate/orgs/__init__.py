"""Organizations: a shared credit account, members with allocations, org admins."""
