"""The choices of a training run that the command line offers (imports nothing heavy)."""

MINING = ("batch-hard", "semi-hard")
# facenet-pytorch InceptionResnetV1 modules trained by default: the last five
# Inception-ResNet-C blocks, the final block, the bottleneck and its batch norm.
DEFAULT_TRAINABLE = ("repeat_3", "block8", "last_linear", "last_bn")
