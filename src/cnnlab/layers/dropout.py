"""Placeholder: being written."""
import torch.nn as nn

Dropout = nn.Dropout
