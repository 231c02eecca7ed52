"""The CAN graph models: a GAT classifier with jumping knowledge and a VGAE anomaly detector."""
