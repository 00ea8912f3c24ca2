"""How a trained model meets its users: the input rule, MNIST-style conversion, the served model."""
