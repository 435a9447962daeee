using System.Diagnostics;
using System.Text.Json;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// <c>lsm cluster join</c> and <c>leave</c> for real: a second Coordinator started without seeds waits outside any
/// cluster until an operator joins it to the first one through its API, then leaves again. Both stopped by pid.
/// </summary>
public sealed class ClusterJoinTests : IAsyncLifetime
{
    private readonly List<Process> _processes = [];
    private readonly string _data = Path.Combine(Path.GetTempPath(), $"lsm-join-{Guid.NewGuid():N}");

    public Task InitializeAsync()
    {
        Directory.CreateDirectory(_data);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        foreach (var process in _processes)
        {
            if (!process.HasExited)
            {
                process.Kill();
                await process.WaitForExitAsync();
            }
            process.Dispose();
        }
        Directory.Delete(_data, recursive: true);
    }

    private (string Api, string Address) StartCoordinator(string name, bool seedItself)
    {
        var port = TokenCoordinator.FreePort();
        var api = $"http://127.0.0.1:{TokenCoordinator.FreePort()}";
        var address = $"akka.tcp://lsm@127.0.0.1:{port}";
        string[] arguments = ["--port", port.ToString(), "--http", api, "--data-dir", Path.Combine(_data, name)];
        if (seedItself) arguments = [.. arguments, "--seed", address];
        var psi = TokenCoordinator.Start(arguments);
        psi.RedirectStandardOutput = false;
        psi.RedirectStandardError = false;
        _processes.Add(Process.Start(psi)!);
        return (api, address);
    }

    private static async Task<JsonElement> ClusterOf(string api)
    {
        var shown = await CliProcess.RunAsync(api, "cluster", "show", "--json");
        return shown.ExitCode == 0 ? JsonDocument.Parse(shown.Stdout).RootElement : default;
    }

    private static async Task WaitForAsync(string what, Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"waited 60 s for {what}");
            await Task.Delay(300);
        }
    }

    private static int UpMembers(JsonElement cluster) =>
        cluster.ValueKind == JsonValueKind.Object ? cluster.GetProperty("members").EnumerateArray().Count(m => m.GetProperty("status").GetString() == "up") : 0;

    [Fact]
    public async Task A_coordinator_without_seeds_joins_through_lsm_and_leaves_again()
    {
        var (firstApi, firstAddress) = StartCoordinator("first", seedItself: true);
        var (secondApi, secondAddress) = StartCoordinator("second", seedItself: false);
        await WaitForAsync("the first Coordinator up alone", async () => UpMembers(await ClusterOf(firstApi)) == 1);

        var joined = await CliProcess.RunAsync(secondApi, "cluster", "join", firstAddress);
        Assert.True(joined.ExitCode == 0, joined.ToString());
        await WaitForAsync("both Coordinators up in one cluster", async () => UpMembers(await ClusterOf(firstApi)) == 2);
        var seenBySecond = await ClusterOf(secondApi);
        Assert.Contains(seenBySecond.GetProperty("members").EnumerateArray(), m => m.GetProperty("address").GetString() == firstAddress);

        var left = await CliProcess.RunAsync(firstApi, "cluster", "leave", secondAddress);
        Assert.True(left.ExitCode == 0, left.ToString());
        await WaitForAsync("the second Coordinator gone from the first one's view", async () =>
        {
            var cluster = await ClusterOf(firstApi);
            return cluster.ValueKind == JsonValueKind.Object
                   && cluster.GetProperty("members").EnumerateArray().All(m => m.GetProperty("address").GetString() != secondAddress);
        });
        Assert.Equal(1, UpMembers(await ClusterOf(firstApi)));
    }
}
