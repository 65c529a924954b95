"""SRGAN's networks (Ledig et al., CVPR 2017); iSeeBetter uses the discriminator."""
