using System.Net;
using System.Text;
using System.Text.Json;
using LiveMigration.Cli.Local;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// What <c>lsm local up</c> waits for before it starts a dead host again on its old address (issue 10), against a
/// stand-in Coordinator API that plays the cluster's views in order: the old incarnation listed, downed, removed.
/// </summary>
public sealed class OldIncarnationTests : IAsyncDisposable
{
    private const string Coordinator = "akka.tcp://lsm@127.0.0.1:4053";
    private const string Host1 = "akka.tcp://lsm@127.0.0.1:4054";
    private const string Host2 = "akka.tcp://lsm@127.0.0.1:4055";

    private readonly string _dataDirectory = Path.Combine(Path.GetTempPath(), $"lsm-old-incarnation-{Guid.NewGuid():N}");
    private readonly StandInCoordinator _api = new();

    [Fact]
    public async Task A_dead_host_still_listed_is_downed_and_the_wait_ends_only_when_every_member_has_seen_it_removed()
    {
        // after the down: listed Down; then gone from a view host-2 has not seen yet; then gone from a view all have seen
        _api.Views.Enqueue(View([(Coordinator, "up", true), (Host1, "up", false), (Host2, "up", true)], seenBy: [Coordinator, Host2]));
        _api.AfterDown.Enqueue(View([(Coordinator, "up", true), (Host1, "down", false), (Host2, "up", true)], seenBy: [Coordinator]));
        _api.AfterDown.Enqueue(View([(Coordinator, "up", true), (Host2, "up", true)], seenBy: [Coordinator]));
        _api.AfterDown.Enqueue(View([(Coordinator, "up", true), (Host2, "up", true)], seenBy: [Coordinator, Host2]));
        var reports = new List<string>();

        await OldIncarnation.RemoveAsync(_api.Cluster(_dataDirectory), new Dictionary<string, string> { ["host-1"] = Host1 }, () => true, TimeSpan.FromSeconds(30), reports.Add,
            CancellationToken.None);

        Assert.Equal([Host1], _api.DownRequests);
        Assert.Empty(_api.Views); // it returned on the last view, not on the one host-2 had not seen
        Assert.Equal([$"host-1: its old incarnation {Host1} is out of the cluster (downed: its process is gone)"], reports);
    }

    [Fact]
    public async Task An_old_incarnation_that_is_never_removed_stops_the_restart_with_what_was_waited_for()
    {
        _api.Views.Enqueue(View([(Coordinator, "up", true), (Host1, "down", false), (Host2, "up", true)], seenBy: [Coordinator, Host2]));

        var refused = await Assert.ThrowsAsync<TimeoutException>(() => OldIncarnation.RemoveAsync(_api.Cluster(_dataDirectory),
            new Dictionary<string, string> { ["host-1"] = Host1 }, () => true, TimeSpan.FromSeconds(1), null, CancellationToken.None));

        Assert.Contains($"{Host1} (down) to be removed from the cluster", refused.Message);
        Assert.Empty(_api.DownRequests); // already Down: nothing to ask
    }

    [Fact]
    public async Task A_coordinator_that_is_not_up_itself_is_not_taken_for_an_empty_cluster()
    {
        _api.Views.Enqueue(View([(Coordinator, "joining", true)], seenBy: [Coordinator]));

        var refused = await Assert.ThrowsAsync<TimeoutException>(() => OldIncarnation.RemoveAsync(_api.Cluster(_dataDirectory),
            new Dictionary<string, string> { ["host-1"] = Host1 }, () => true, TimeSpan.FromSeconds(1), null, CancellationToken.None));

        Assert.Contains("the Coordinator to be Up in the cluster", refused.Message);
    }

    [Fact]
    public async Task A_coordinator_that_exited_ends_the_wait_at_once()
    {
        _api.Views.Enqueue(View([(Coordinator, "up", true), (Host1, "up", false)], seenBy: [Coordinator]));

        var refused = await Assert.ThrowsAsync<TimeoutException>(() => OldIncarnation.RemoveAsync(_api.Cluster(_dataDirectory),
            new Dictionary<string, string> { ["host-1"] = Host1 }, () => false, TimeSpan.FromMinutes(5), null, CancellationToken.None));

        Assert.Contains("the Coordinator exited", refused.Message);
        Assert.Empty(_api.DownRequests);
    }

    private static string View(IEnumerable<(string Address, string Status, bool Reachable)> members, IEnumerable<string> seenBy) =>
        JsonSerializer.Serialize(new
        {
            self = Coordinator,
            members = members.Select(m => new { address = m.Address, status = m.Status, roles = Array.Empty<string>(), reachable = m.Reachable }),
            unreachable = members.Where(m => !m.Reachable).Select(m => m.Address),
            seenBy,
        });

    public async ValueTask DisposeAsync()
    {
        await _api.DisposeAsync();
        if (Directory.Exists(_dataDirectory)) Directory.Delete(_dataDirectory, recursive: true);
    }

    /// <summary>GET /api/cluster answers the next view (the last one stays); POST /api/cluster/down queues the views of after a down.</summary>
    private sealed class StandInCoordinator : IAsyncDisposable
    {
        private readonly HttpListener _listener = new();
        private readonly int _port = LocalCluster.FreePort();
        private readonly Task _serving;
        private string? _current;

        public StandInCoordinator()
        {
            _listener.Prefixes.Add($"http://127.0.0.1:{_port}/");
            _listener.Start();
            _serving = Task.Run(ServeAsync);
        }

        public Queue<string> Views { get; } = new();
        public Queue<string> AfterDown { get; } = new();
        public List<string> DownRequests { get; } = [];

        public LocalCluster Cluster(string dataDirectory) => new(dataDirectory) { HttpPort = _port };

        private async Task ServeAsync()
        {
            while (_listener.IsListening)
            {
                HttpListenerContext context;
                try { context = await _listener.GetContextAsync(); }
                catch (Exception e) when (e is HttpListenerException or ObjectDisposedException) { return; }
                string body;
                lock (this)
                {
                    if (context.Request.HttpMethod == "POST" && context.Request.Url!.AbsolutePath == "/api/cluster/down")
                    {
                        using var reader = new StreamReader(context.Request.InputStream);
                        DownRequests.Add(JsonDocument.Parse(reader.ReadToEnd()).RootElement.GetProperty("address").GetString()!);
                        while (AfterDown.TryDequeue(out var view)) Views.Enqueue(view);
                        body = "{}";
                    }
                    else
                    {
                        if (Views.TryDequeue(out var next)) _current = next;
                        body = _current ?? "{}";
                    }
                }
                var bytes = Encoding.UTF8.GetBytes(body);
                context.Response.ContentType = "application/json";
                await context.Response.OutputStream.WriteAsync(bytes);
                context.Response.Close();
            }
        }

        public async ValueTask DisposeAsync()
        {
            _listener.Stop();
            _listener.Close();
            await _serving;
        }
    }
}
