"""The order service: places orders (TCC reserve + channel payment) and settles payments."""
