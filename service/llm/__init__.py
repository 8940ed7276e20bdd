"""Reaching the model: the openai SDK builds and sends the request, the body is read raw on a lean token path;
errors are mapped to the service's own; context windows and token counts; the embedded local model server.
Knows nothing of conversations."""
