using System.Net.Http.Json;
using System.Text.Json;
using LiveMigration.Cli.Tests;

namespace LiveMigration.Dashboard.Tests;

/// <summary><c>lsm migration watch</c> run as a process against the real cluster while the VM's disk moves.</summary>
[Collection(DashboardCollection.Name)]
public sealed class WatchCommandTests(DashboardCluster cluster)
{
    [Fact]
    public async Task Watch_follows_a_migration_to_completed_and_exits_0()
    {
        var (_, destination) = await cluster.SettledDiskAsync();
        var id = await cluster.StartMoveAsync(destination);

        var watched = await CliProcess.RunAsync(cluster.Api, "migration", "watch", id);

        Assert.True(watched.ExitCode == 0, watched.ToString());
        // Piped, it writes a line per change, then the migration's tables.
        Assert.Contains("completed", watched.Stdout);
        Assert.Contains(cluster.Cluster.Image.ToString()[..8], watched.Stdout);
        Assert.Contains("Pivot", watched.Stdout);
        await cluster.SettledDiskAsync(expectedDomain: destination);

        // --json on the finished migration: its final state, one JSON document per line.
        var json = await CliProcess.RunAsync(cluster.Api, "migration", "watch", id, "--json");
        Assert.True(json.ExitCode == 0, json.ToString());
        var line = Assert.Single(json.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        var final = JsonDocument.Parse(line).RootElement;
        Assert.Equal(id, final.GetProperty("id").GetString());
        Assert.Equal("completed", final.GetProperty("status").GetString());
    }

    [Fact]
    public async Task Watch_of_a_cancelled_migration_prints_each_event_as_a_json_line_and_exits_1()
    {
        var (current, destination) = await cluster.SettledDiskAsync();
        // The bandwidth limits the mirror of the active layer (the internal layers copy at full speed): at 256 KiB/s
        // its few MiB keep the migration before its pivot for about ten seconds, time for a loaded machine to cancel.
        var id = await cluster.StartMoveAsync(destination, bandwidthBytesPerSecond: 256L << 10);
        // Cancelled only once the watch has its first event, however long the process takes to start.
        var connected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var watching = CliProcess.RunAsync(cluster.Api, _ => connected.TrySetResult(), "migration", "watch", id, "--json");
        await connected.Task.WaitAsync(TimeSpan.FromSeconds(60));
        using (var cancel = await cluster.Http.PostAsJsonAsync($"{cluster.Api}/api/migrations/{id}/cancel", new { }))
            Assert.True(cancel.IsSuccessStatusCode, await cancel.Content.ReadAsStringAsync());

        var watched = await watching;

        Assert.True(watched.ExitCode == 1, watched.ToString());
        var events = watched.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.True(events.Count >= 2, watched.ToString());
        Assert.All(events, e => Assert.Equal(id, e.GetProperty("id").GetString()));
        Assert.False(events[0].GetProperty("finished").GetBoolean());
        Assert.Equal("cancelled", events[^1].GetProperty("status").GetString());
        Assert.True(events[^1].GetProperty("finished").GetBoolean());
        // Rolled back: the disk stays where it was.
        await cluster.SettledDiskAsync(expectedDomain: current);
    }

    [Fact]
    public async Task Watch_of_an_unknown_migration_and_of_a_malformed_id_are_refused_with_exit_2()
    {
        var unknown = await CliProcess.RunAsync(cluster.Api, "migration", "watch", Guid.NewGuid().ToString());
        Assert.True(unknown.ExitCode == 2, unknown.ToString());
        Assert.Contains("MIGRATION_NOT_FOUND", unknown.Stderr);

        var malformed = await CliProcess.RunAsync(cluster.Api, "migration", "watch", "nope");
        Assert.True(malformed.ExitCode == 2, malformed.ToString());
    }
}
