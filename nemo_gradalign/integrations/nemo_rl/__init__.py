"""NeMo RL integration. Nothing here imports ``nemo_rl`` at package import time."""
