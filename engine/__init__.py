"""The streaming core: cache, schedule, loop, stream session. Imports no other top-level package."""
