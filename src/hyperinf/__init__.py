"""hyperinf: which training examples help or hurt a fine-tuned model.

Influence scores follow one sign convention everywhere: a large positive score means that
up-weighting the training example raises the query loss, i.e. the example is harmful.
"""

__version__ = "0.1.0"
