"""koiitasks: write, test and run Koii-style tasks in Python."""
