"""The networks: classifier and heads, losses, inferers, the learned nodule mask."""
