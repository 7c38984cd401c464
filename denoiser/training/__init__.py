"""Fine-tuning the streaming denoiser: on-the-fly mixing, augmentation, losses, resumable loop."""
