"""Lightning callbacks of ddpm_lab."""
