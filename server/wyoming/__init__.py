"""The Wyoming protocol (Home Assistant's voice pipeline) on the server's own engines, accounts and minutes:
`service` (lifecycle), `handler` (one connection: asr and tts), `info` (the describe answer)."""
