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

    /// <param name="tokens">The API tokens, when set: then only a request that carries one (either role) sees the checks'
    /// details (node address, journal path or server); anyone else gets up/down alone.</param>
    public static IEndpointRouteBuilder MapHealth(this IEndpointRouteBuilder app, JournalOptions journal, ApiTokens? tokens = null)
    {
        var probe = new JournalProbe(journal);
        app.MapGet("/healthz/live", () => Results.Ok(new HealthResponse("up", new Dictionary<string, HealthCheckResponse>())));
        app.MapGet("/healthz/ready", (HttpContext context, ActorSystem system, CancellationToken ct) => ReadyAsync(context, system, probe, tokens, ct));
        app.MapGet("/healthz", (HttpContext context, ActorSystem system, CancellationToken ct) => ReadyAsync(context, system, probe, tokens, ct));
        return app;
    }

    private static async Task<IResult> ReadyAsync(HttpContext context, ActorSystem system, JournalProbe probe, ApiTokens? tokens, CancellationToken ct)
    {
        var self = AkkaCluster.Get(system).SelfMember;
        var cluster = self.Status == Akka.Cluster.MemberStatus.Up
            ? new HealthCheckResponse("up", $"{self.Address} is up")
            : new HealthCheckResponse("down", $"{self.Address} is {ClusterEndpoints.StatusName(self.Status)}, not up");
        var store = await probe.CheckAsync(ct);
        var ready = cluster.Status == "up" && store.Status == "up";
        var checks = new Dictionary<string, HealthCheckResponse> { ["cluster"] = cluster, ["journal"] = store };
        if (tokens is not null && tokens.RoleOf(context.Request) is null)
            checks = checks.ToDictionary(c => c.Key, c => c.Value with { Detail = "" });
        return Results.Json(new HealthResponse(ready ? "up" : "down", checks), statusCode: ready ? StatusCodes.Status200OK : StatusCodes.Status503ServiceUnavailable);
    }

    /// <summary>The journal probe's last answer, kept a second: probes open without a token must not become a load on the database.</summary>
    private sealed class JournalProbe(JournalOptions journal)
    {
        private static readonly TimeSpan KeepFor = TimeSpan.FromSeconds(1);
        private readonly object _gate = new();
        private (DateTime At, HealthCheckResponse Answer)? _last;

        public async Task<HealthCheckResponse> CheckAsync(CancellationToken ct)
        {
            lock (_gate)
                if (_last is { } last && DateTime.UtcNow - last.At < KeepFor) return last.Answer;
            var answer = await ProbeJournalAsync(journal, ct);
            lock (_gate) _last = (DateTime.UtcNow, answer);
            return answer;
        }
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
