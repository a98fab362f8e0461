"""Servers: the library for agents (MCP) and browsers (HTTP API, live studio), over one service
layer (``service``); the transports (``mcp``, ``http``) hold no logic of their own."""
