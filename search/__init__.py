"""Ray + Optuna search over a trained OptEmbed supernet (planned; see the open OptEmbed issue)."""
