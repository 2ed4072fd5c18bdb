"""OptEmbed: the supernet, its module, variants, plans and masks, scoring, the pick, retraining."""
