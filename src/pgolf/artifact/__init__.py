"""What is counted and submitted: the byte budget, the code size, the self-contained train_gpt.py of a config.

Above the parts (it builds models to price them) and below the training loop (which needs code_bytes).
"""
