"""Server side: the ServerApp, its strategy and the pretraining command."""
