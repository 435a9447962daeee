using System.Net.Http.Json;
using System.Text.Json;
using LiveMigration.Cli.Local;
using LiveMigration.Shared.Hosting;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// Membership changes seen through the CLI on a cluster of its own (a Coordinator and one host, no VM): a host
/// killed with SIGKILL shows in <c>lsm cluster tail</c> as unreachable, <c>lsm cluster down-unreachable</c> downs it,
/// and the tail shows it removed.
/// </summary>
public sealed class ClusterPaletteTests : IAsyncLifetime
{
    private readonly string _data = Path.Combine("/tmp", $"lsm-{Guid.NewGuid().ToString("N")[..8]}");
    private LocalCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        Directory.CreateDirectory(_data);
        _cluster = new LocalCluster(_data) { ExtraHocon = ClusterNodeHosting.FastTestTimings };
        Directory.CreateDirectory(_cluster.DomainRoot);
        _cluster.StartCoordinator();
        _cluster.StartHost("host-1", spm: true);
        await AwaitClusterAsync(c => Members(c, "up") == 2, "both members up");
    }

    public async Task DisposeAsync()
    {
        await _cluster.DisposeAsync();
        Directory.Delete(_data, recursive: true);
    }

    private static int Members(JsonElement cluster, string status) =>
        cluster.GetProperty("members").EnumerateArray().Count(m => m.GetProperty("status").GetString() == status);

    private async Task AwaitClusterAsync(Func<JsonElement, bool> condition, string what)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(45);
        while (true)
        {
            try
            {
                if (condition(await http.GetFromJsonAsync<JsonElement>($"{_cluster.ApiUrl}/api/cluster"))) return;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException) { }
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"waited 45 s for {what}");
            await Task.Delay(200);
        }
    }

    [Fact]
    public async Task A_killed_host_is_tailed_as_unreachable_then_downed_by_down_unreachable_and_removed()
    {
        var host = _cluster.Nodes.Single(n => n.Name == "host-1");
        var tail = CliProcess.RunAsync(_cluster.ApiUrl, "cluster", "tail", "--seconds", "30", "--json");
        await Task.Delay(TimeSpan.FromSeconds(2)); // the tail is connected and has printed the members

        await _cluster.KillAsync(host);
        await AwaitClusterAsync(c => c.GetProperty("unreachable").GetArrayLength() == 1, "the killed host unreachable");
        var down = await CliProcess.RunAsync(_cluster.ApiUrl, "cluster", "down-unreachable", "--json");
        Assert.True(down.ExitCode == 0, down.ToString());
        var downed = Assert.Single(JsonDocument.Parse(down.Stdout).RootElement.GetProperty("downed").EnumerateArray()).GetString()!;
        Assert.NotEqual($"akka.tcp://lsm@127.0.0.1:{_cluster.CoordinatorPort}", downed);
        await AwaitClusterAsync(c => c.GetProperty("members").GetArrayLength() == 1, "the downed host removed");

        var tailed = await tail;
        Assert.True(tailed.ExitCode == 0, tailed.ToString());
        var events = tailed.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement)
            .Select(e => (Type: e.GetProperty("type").GetString(), Address: e.GetProperty("address").GetString())).ToList();
        Assert.Contains(("MemberUp", downed), events);
        Assert.Contains(("UnreachableMember", downed), events);
        Assert.Contains(("MemberRemoved", downed), events);
        Assert.True(events.IndexOf(("UnreachableMember", downed)) < events.IndexOf(("MemberRemoved", downed)), string.Join("\n", events));
    }
}
