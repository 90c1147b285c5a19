"""PyTorch reference of In-Place TTT (the oracle for engine/'s TTT tests). See README.md."""
