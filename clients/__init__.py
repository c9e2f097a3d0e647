"""Client side of the gateway: `client` (OccupancyClient, AsyncOccupancyClient, GatewayError), `dataset`
(frames of a prepared data root), `render` (pictures of grids), `bench` (a bounded load generator), and
the `occ predict`, `occ render` and `occ bench` commands. Imports only `occupancy` of the project."""
