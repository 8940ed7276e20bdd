"""The transport of a running stream: SSE framing, the live stream and its readers, the registry, the watchdog
(heartbeat, idle, disconnect, resume grace), the cross-host mirror, and the end of streams on shutdown.

Below the views (``service/api``), above the chat turn (``service/chat``): it talks to a chat stream only through
its methods, and knows nothing of Flask.
"""
