"""Interaction graphs of components: build, prune, summarise, export, plot.

``interaction_graph(model_or_components, data, basis)`` joins the components (basis directions)
of consecutive layers by Jacobian or integrated-gradient attributions (Bushnaq et al. 2024,
arXiv:2405.10928); the result wraps a ``networkx.DiGraph`` (``.nx``) and prunes, summarises,
saves (GraphML, GEXF, node-link JSON, DOT) and plots itself.
"""

from wdecomp.graph.build import interaction_graph, quadrature
from wdecomp.graph.export import read_nx, save_graph
from wdecomp.graph.graph import Completeness, GraphSummary, InteractionGraph, PairSummary, load_graph, node_id
from wdecomp.graph.modules import ModulePartition, Modules, find_modules
from wdecomp.graph.plot import layered_layout, plot_graph

__all__ = [
    "Completeness",
    "GraphSummary",
    "InteractionGraph",
    "ModulePartition",
    "Modules",
    "PairSummary",
    "find_modules",
    "interaction_graph",
    "layered_layout",
    "load_graph",
    "node_id",
    "plot_graph",
    "quadrature",
    "read_nx",
    "save_graph",
]
