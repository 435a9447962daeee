using System.Diagnostics;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>
/// A network namespace of one test joined to this machine's own by a veth pair, with a /30 of 10.213.0.0/16 on it
/// (root side .1, namespace side .2): a node started in the namespace reaches the others only over this link, so
/// <see cref="CutAsync"/> partitions it. The link is cut on the namespace side: the root side keeps its route (marked
/// linkdown), so nothing sent to the namespace's address ever leaves through this machine's real interfaces, and the
/// root-side address stays usable by the nodes that share it. Everything is made and removed by name.
/// </summary>
public sealed class NamespacedLink : IAsyncDisposable
{
    private NamespacedLink(string id, int third, int fourth)
    {
        Namespace = $"lsmtest-{id}";
        RootDevice = $"lsm{id}r";
        NamespaceDevice = $"lsm{id}n";
        RootAddress = $"10.213.{third}.{fourth + 1}";
        NamespaceAddress = $"10.213.{third}.{fourth + 2}";
    }

    public string Namespace { get; }
    public string RootDevice { get; }
    public string NamespaceDevice { get; }
    public string RootAddress { get; }
    public string NamespaceAddress { get; }
    public bool IsCut { get; private set; }

    /// <summary>Makes the namespace and the link, both up; what was made before a failure is removed again.</summary>
    public static async Task<NamespacedLink> CreateAsync()
    {
        var id = Guid.NewGuid().ToString("N")[..6];
        var used = (await Ip("-4", "-o", "addr", "show")).Stdout;
        NamespacedLink link;
        do link = new NamespacedLink(id, Random.Shared.Next(0, 256), Random.Shared.Next(0, 64) * 4);
        while (used.Contains(link.RootAddress + "/") || used.Contains(link.NamespaceAddress + "/"));
        try
        {
            await Must("netns", "add", link.Namespace);
            await Must("link", "add", link.RootDevice, "type", "veth", "peer", "name", link.NamespaceDevice);
            await Must("link", "set", link.NamespaceDevice, "netns", link.Namespace);
            await Must("addr", "add", $"{link.RootAddress}/30", "dev", link.RootDevice);
            await Must("link", "set", link.RootDevice, "up");
            await Must("-n", link.Namespace, "addr", "add", $"{link.NamespaceAddress}/30", "dev", link.NamespaceDevice);
            await Must("-n", link.Namespace, "link", "set", link.NamespaceDevice, "up");
            await Must("-n", link.Namespace, "link", "set", "lo", "up");
            return link;
        }
        catch
        {
            await link.DisposeAsync();
            throw;
        }
    }

    public async Task CutAsync()
    {
        await Must("-n", Namespace, "link", "set", NamespaceDevice, "down");
        IsCut = true;
    }

    public async Task HealAsync()
    {
        await Must("-n", Namespace, "link", "set", NamespaceDevice, "up");
        IsCut = false;
    }

    /// <summary>
    /// Removes the link and the namespace. Any process still inside (a node or QEMU the test started there and did not
    /// stop) is SIGKILLed by the pid the namespace lists, so the namespace really goes.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        var left = (await Ip("netns", "pids", Namespace)).Stdout
            .Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(p => int.TryParse(p, out var pid) ? pid : 0).Where(p => p > 0).ToList();
        foreach (var pid in left)
        {
            try { Process.GetProcessById(pid).Kill(); }
            catch (ArgumentException) { } // gone meanwhile
        }
        await Ip("link", "del", RootDevice); // takes its peer with it, wherever it is
        await Ip("netns", "del", Namespace);
    }

    /// <summary>The namespaces and links of partition tests still on this machine (for a test's final check).</summary>
    public static async Task<(bool NamespaceLeft, bool LinkLeft)> LeftoversOfAsync(NamespacedLink link) =>
        ((await Ip("netns", "list")).Stdout.Contains(link.Namespace), (await Ip("-o", "link", "show")).Stdout.Contains(link.RootDevice));

    private static async Task Must(params string[] arguments)
    {
        var result = await Ip(arguments);
        if (result.ExitCode != 0)
            throw new InvalidOperationException($"ip {string.Join(' ', arguments)}: exit {result.ExitCode}: {result.Stderr}");
    }

    private static async Task<(int ExitCode, string Stdout, string Stderr)> Ip(params string[] arguments)
    {
        var psi = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        using var process = Process.Start(psi) ?? throw new InvalidOperationException("cannot start ip");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        return (process.ExitCode, await stdout, await stderr);
    }
}
