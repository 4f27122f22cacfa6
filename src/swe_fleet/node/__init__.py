"""Which Ray node this process becomes (pure decision) and starting it."""
