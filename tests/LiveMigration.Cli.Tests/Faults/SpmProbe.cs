using System.Text.Json;
using LiveMigration.HostNode.Spm;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>What the SPM tests look at from outside a local cluster: which host the cluster says runs the SPM, and the lease record itself.</summary>
internal static class SpmProbe
{
    /// <summary>The host the cluster says runs the SPM now (<c>lsm hosts</c>), or null.</summary>
    public static async Task<string?> HostAsync(LocalClusterSession cluster)
    {
        var shown = await cluster.Lsm("hosts", "--json");
        if (shown.ExitCode != 0) return null;
        return JsonDocument.Parse(shown.Stdout).RootElement.GetProperty("hosts").EnumerateArray()
            .Where(h => h.GetProperty("spm").GetBoolean()).Select(h => h.GetProperty("id").GetString()).FirstOrDefault();
    }

    /// <summary>The lease record as any host would read it.</summary>
    public static Task<LeaseRecord> ReadLeaseAsync(string path) =>
        new PoolLease(path, "fault-test-reader", TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1)).ReadAsync();

    /// <summary>Waits for <paramref name="condition"/>, failing with the nodes' logs when it is not met within <paramref name="within"/>.</summary>
    public static async Task WaitAsync(LocalClusterSession cluster, string what, Func<Task<bool>> condition, TimeSpan within)
    {
        var deadline = DateTime.UtcNow + within;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline)
                throw new Xunit.Sdk.XunitException($"waited {within.TotalSeconds:0} s for {what}\n{cluster.LogTails()}");
            await Task.Delay(200);
        }
    }
}
