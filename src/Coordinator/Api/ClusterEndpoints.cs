using Akka.Actor;
using Akka.Cluster.Sharding;
using Akka.Hosting;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Model;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using AkkaCluster = Akka.Cluster.Cluster;

namespace LiveMigration.Coordinator.Api;

/// <summary>The JSON body of POST /api/cluster/leave, /down and /join.</summary>
public sealed record ClusterAddressBody(string? Address);

public sealed record ClusterMemberResponse(string Address, string Status, IReadOnlyList<string> Roles, bool Reachable);

/// <summary>
/// The JSON of GET /api/cluster: this node, the leader, every member, the ones seen as unreachable, and the members
/// that have seen this node's latest view (<c>lsm local up</c> waits on it until every member let go of a dead node).
/// </summary>
public sealed record ClusterResponse(string Self, string? Leader, IReadOnlyList<ClusterMemberResponse> Members, IReadOnlyList<string> Unreachable,
    IReadOnlyList<string> SeenBy);

public sealed record ShardRegionNodeResponse(string Address, int Shards, int Entities);

public sealed record ShardRegionResponse(string TypeName, int Shards, int Entities, IReadOnlyList<ShardRegionNodeResponse>? Nodes, string? Error);

public sealed record ShardStatsResponse(string ShardId, int Entities);

public sealed record ShardNodeStatsResponse(string Address, IReadOnlyList<ShardStatsResponse> Shards);

/// <summary>The JSON of GET /api/cluster/sharding/regions/{typeName}/stats: per node, its shards and their entity counts.</summary>
public sealed record RegionStatsResponse(string TypeName, IReadOnlyList<ShardNodeStatsResponse> Nodes);

/// <summary>The JSON of GET /api/cluster/sharding/regions.</summary>
public sealed record ShardRegionsResponse(IReadOnlyList<ShardRegionResponse> Regions);

/// <summary>
/// The cluster palette of the HTTP API (what Petabridge's <c>pbm</c> gives Akka.NET operators): membership,
/// leave/down/join of a member by its address, and the sharding regions with their shard and entity counts.
/// </summary>
public static class ClusterEndpoints
{
    /// <summary>The type name <see cref="MigrationHosting.WithMigrationSharding"/> registers the region under.</summary>
    private const string MigrationTypeName = "migration";
    private static readonly TimeSpan StatsTimeout = TimeSpan.FromSeconds(5);

    public static IEndpointRouteBuilder MapClusterApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/api/cluster", (ActorSystem system) => Results.Ok(Describe(AkkaCluster.Get(system))));
        app.MapPost("/api/cluster/down-unreachable", (ActorSystem system) =>
        {
            var cluster = AkkaCluster.Get(system);
            var downed = cluster.State.Unreachable.Select(m => m.Address).OrderBy(a => a.ToString(), StringComparer.Ordinal).ToList();
            foreach (var address in downed) cluster.Down(address);
            return Results.Ok(new { downed = downed.Select(a => a.ToString()).ToList() });
        });
        app.MapGet("/api/cluster/events", (HttpContext http, ActorSystem system,
                Microsoft.Extensions.Options.IOptions<Microsoft.AspNetCore.Http.Json.JsonOptions> json, CancellationToken ct) =>
            ClusterEventStream.StreamAsync(http, system, json.Value.SerializerOptions, ct));
        app.MapGet("/api/cluster/sharding/regions/{typeName}/stats", async (string typeName, ActorSystem system,
            IRequiredActor<MigrationRegion> migrationRegion, CancellationToken ct) =>
        {
            var sharding = ClusterSharding.Get(system);
            if (!sharding.ShardTypeNames.Contains(typeName))
                return Refused(StatusCodes.Status404NotFound, ApiErrorCodes.RegionNotFound,
                    $"no shard region '{ApiText.Clip(typeName)}'; this cluster has: {string.Join(", ", sharding.ShardTypeNames.OrderBy(n => n, StringComparer.Ordinal))}");
            var region = typeName == MigrationTypeName ? migrationRegion.ActorRef : sharding.ShardRegion(typeName);
            try
            {
                var stats = await region.Ask<ClusterShardingStats>(new GetClusterShardingStats(StatsTimeout), StatsTimeout + TimeSpan.FromSeconds(1), ct);
                var nodes = stats.Regions
                    .Select(r => new ShardNodeStatsResponse(r.Key.ToString(),
                        r.Value.Stats.Select(s => new ShardStatsResponse(s.Key, s.Value)).OrderBy(s => s.ShardId, StringComparer.Ordinal).ToList()))
                    .OrderBy(n => n.Address, StringComparer.Ordinal)
                    .ToList();
                return Results.Ok(new RegionStatsResponse(typeName, nodes));
            }
            catch (AskTimeoutException)
            {
                return Refused(StatusCodes.Status503ServiceUnavailable, "UNAVAILABLE", $"the {typeName} region did not report its shards within {StatsTimeout.TotalSeconds:0} s");
            }
        });
        app.MapPost("/api/cluster/{action}", (string action, ClusterAddressBody? body, ActorSystem system) =>
        {
            if (action is not ("leave" or "down" or "join"))
                return Refused(StatusCodes.Status404NotFound, ApiErrorCodes.NoSuchAction, $"no cluster action '{ApiText.Clip(action)}' (leave, down, join)");
            var cluster = AkkaCluster.Get(system);
            if (!TryParseMemberAddress(body?.Address, cluster.SelfAddress.Protocol, out var address, out var problem))
                return Refused(StatusCodes.Status400BadRequest, ErrorCodes.InvalidArgument, problem);
            var isMember = cluster.State.Members.Any(m => m.Address.Equals(address));
            switch (action)
            {
                case "leave" when !isMember:
                case "down" when !isMember:
                    return Refused(StatusCodes.Status404NotFound, ApiErrorCodes.MemberNotFound, $"{address} is not a member of the cluster");
                case "leave":
                    cluster.Leave(address);
                    break;
                case "down":
                    cluster.Down(address);
                    break;
                default:
                    // Joining asks this node to join the cluster at that address (as pbm's cluster join does).
                    cluster.Join(address);
                    break;
            }
            return Results.Ok(new { address = address.ToString(), action, message = $"{action} of {address} requested" });
        });
        app.MapGet("/api/cluster/sharding/regions", async (ActorSystem system, IRequiredActor<MigrationRegion> migrationRegion, CancellationToken ct) =>
        {
            var sharding = ClusterSharding.Get(system);
            var regions = new List<ShardRegionResponse>();
            foreach (var typeName in sharding.ShardTypeNames.OrderBy(n => n, StringComparer.Ordinal))
            {
                // The migration region is the one this API owns (from the ActorRegistry); other types by name.
                var region = typeName == MigrationTypeName ? migrationRegion.ActorRef : sharding.ShardRegion(typeName);
                regions.Add(await StatsOfAsync(typeName, region, ct));
            }
            return Results.Ok(new ShardRegionsResponse(regions));
        });
        return app;
    }

    /// <summary>
    /// An address is accepted only as <c>PROTOCOL://lsm@host:port</c> with the cluster's own protocol (<c>akka.tcp</c>, or
    /// <c>akka.ssl.tcp</c> when it runs mutual TLS): another protocol or system name is never a member of this cluster,
    /// and a typo must not reach Akka (join with a wrong system name hangs silently).
    /// </summary>
    public static bool TryParseMemberAddress(string? text, string protocol, out Address address, out string problem)
    {
        address = Address.AllSystems;
        problem = "";
        var expected = $"{protocol}://{ClusterNodeSettings.SystemName}@host:port";
        if (string.IsNullOrWhiteSpace(text))
        {
            problem = $"address is required, as {expected}";
            return false;
        }
        if (!Address.TryParse(text.Trim(), out var parsed) || parsed is null)
        {
            problem = $"'{ApiText.Clip(text)}' is not an Akka address; expected {expected}";
            return false;
        }
        if (parsed.Protocol != protocol || parsed.System != ClusterNodeSettings.SystemName || parsed.Host is null || parsed.Port is null or <= 0 or > 65535)
        {
            problem = $"'{ApiText.Clip(text)}' is not an address of this cluster; expected {expected}";
            return false;
        }
        address = parsed;
        return true;
    }

    private static ClusterResponse Describe(AkkaCluster cluster)
    {
        var state = cluster.State;
        var unreachable = state.Unreachable.Select(m => m.Address).ToHashSet();
        var members = state.Members
            .Select(m => new ClusterMemberResponse(m.Address.ToString(), StatusName(m.Status), m.Roles.OrderBy(r => r, StringComparer.Ordinal).ToList(),
                !unreachable.Contains(m.Address)))
            .OrderBy(m => m.Address, StringComparer.Ordinal)
            .ToList();
        return new ClusterResponse(cluster.SelfAddress.ToString(), state.Leader?.ToString(), members,
            unreachable.Select(a => a.ToString()).OrderBy(a => a, StringComparer.Ordinal).ToList(),
            state.SeenBy.Select(a => a.ToString()).OrderBy(a => a, StringComparer.Ordinal).ToList());
    }

    public static string StatusName(Akka.Cluster.MemberStatus status) => status.ToString().ToLowerInvariant() switch
    {
        "weaklyup" => "weakly-up",
        "preparingforshutdown" => "preparing-for-shutdown",
        "readyforshutdown" => "ready-for-shutdown",
        var s => s,
    };

    /// <summary>
    /// Cluster-wide counts per node from the region; a region that does not answer in time is reported with
    /// an error rather than failing the whole listing.
    /// </summary>
    private static async Task<ShardRegionResponse> StatsOfAsync(string typeName, IActorRef region, CancellationToken ct)
    {
        try
        {
            var stats = await region.Ask<ClusterShardingStats>(new GetClusterShardingStats(StatsTimeout), StatsTimeout + TimeSpan.FromSeconds(1), ct);
            var nodes = stats.Regions
                .Select(r => new ShardRegionNodeResponse(r.Key.ToString(), r.Value.Stats.Count, r.Value.Stats.Values.Sum()))
                .OrderBy(n => n.Address, StringComparer.Ordinal)
                .ToList();
            return new ShardRegionResponse(typeName, nodes.Sum(n => n.Shards), nodes.Sum(n => n.Entities), nodes, null);
        }
        catch (Exception e) when (e is AskTimeoutException or TaskCanceledException)
        {
            return new ShardRegionResponse(typeName, 0, 0, null, $"the {typeName} region did not report its shards within {StatsTimeout.TotalSeconds:0} s");
        }
    }

    private static IResult Refused(int status, string code, string message) =>
        Results.Json(new { code, message }, statusCode: status);

}
