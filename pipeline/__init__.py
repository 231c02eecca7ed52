"""Library of the GNN batch suite: data, models, memory planning, training and the stages."""
