using Akka.Actor;
using LiveMigration.Coordinator.Persistence;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Data.Sqlite;
using Npgsql;
using AkkaCluster = Akka.Cluster.Cluster;

namespace LiveMigration.Coordinator.Api;

/// <summary>One check of a health answer: up or down, and why.</summary>
public sealed record HealthCheckResponse(string Status, string Detail);

/// <summary>The JSON of /healthz, /healthz/live and /healthz/ready.</summary>
public sealed record HealthResponse(string Status, IReadOnlyDictionary<string, HealthCheckResponse> Checks);

/// <summary>
/// Liveness (the process answers) and readiness (this node is an Up member of the cluster and its journal answers a
/// query), for load balancers and orchestrators; open without the token, and cheap: one trivial query per probe.
/// </summary>
public static class HealthEndpoints
{
    private static readonly TimeSpan ProbeTimeout = TimeSpan.FromSeconds(3);

    public static IEndpointRouteBuilder MapHealth(this IEndpointRouteBuilder app, JournalOptions journal)
    {
        app.MapGet("/healthz/live", () => Results.Ok(new HealthResponse("up", new Dictionary<string, HealthCheckResponse>())));
        app.MapGet("/healthz/ready", (ActorSystem system, CancellationToken ct) => ReadyAsync(system, journal, ct));
        app.MapGet("/healthz", (ActorSystem system, CancellationToken ct) => ReadyAsync(system, journal, ct));
        return app;
    }

    private static async Task<IResult> ReadyAsync(ActorSystem system, JournalOptions journal, CancellationToken ct)
    {
        var self = AkkaCluster.Get(system).SelfMember;
        var cluster = self.Status == Akka.Cluster.MemberStatus.Up
            ? new HealthCheckResponse("up", $"{self.Address} is up")
            : new HealthCheckResponse("down", $"{self.Address} is {ClusterEndpoints.StatusName(self.Status)}, not up");
        var store = await ProbeJournalAsync(journal, ct);
        var ready = cluster.Status == "up" && store.Status == "up";
        var body = new HealthResponse(ready ? "up" : "down", new Dictionary<string, HealthCheckResponse> { ["cluster"] = cluster, ["journal"] = store });
        return Results.Json(body, statusCode: ready ? StatusCodes.Status200OK : StatusCodes.Status503ServiceUnavailable);
    }

    /// <summary>A real round trip to the store the sagas write to: <c>SELECT 1</c> on PostgreSQL, or on the SQLite journal file.</summary>
    public static async Task<HealthCheckResponse> ProbeJournalAsync(JournalOptions journal, CancellationToken ct)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(ProbeTimeout);
        try
        {
            if (journal.PostgresConnectionString is { } pg)
            {
                await using var connection = new NpgsqlConnection(pg);
                await connection.OpenAsync(limit.Token);
                await using var command = new NpgsqlCommand("SELECT 1", connection);
                await command.ExecuteScalarAsync(limit.Token);
                return new HealthCheckResponse("up", $"PostgreSQL {connection.Host}:{connection.Port} answers");
            }
            if (!File.Exists(journal.JournalFile))
                return new HealthCheckResponse("down", $"the SQLite journal {journal.JournalFile} does not exist");
            // Read-only and unpooled: the probe never takes the writer's lock nor keeps the file open.
            var readOnly = new SqliteConnectionStringBuilder { DataSource = journal.JournalFile, Mode = SqliteOpenMode.ReadOnly, Pooling = false }.ToString();
            await using (var sqlite = new SqliteConnection(readOnly))
            {
                await sqlite.OpenAsync(limit.Token);
                await using var command = sqlite.CreateCommand();
                command.CommandText = "SELECT COUNT(*) FROM sqlite_master";
                await command.ExecuteScalarAsync(limit.Token);
            }
            return new HealthCheckResponse("up", $"SQLite journal {journal.JournalFile} answers");
        }
        catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            return new HealthCheckResponse("down", $"the journal does not answer: {e.GetType().Name}: {e.Message}");
        }
    }
}
