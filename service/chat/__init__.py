"""One chat turn: safety checks, the context fitted to the model's window, the upstream stream turned into plain
events, and the exchange saved once, complete or not. Knows nothing of SSE, Flask or Redis."""
