"""ai-bottleneck: what is holding this AI service back right now?"""

__version__ = "0.1.0"
