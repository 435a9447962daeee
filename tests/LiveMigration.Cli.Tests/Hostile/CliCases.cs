using CsCheck;
using static LiveMigration.Cli.Tests.Hostile.HostileValues;

namespace LiveMigration.Cli.Tests.Hostile;

/// <summary>
/// Generated argument lists for the <c>lsm</c> commands that change things. As with <see cref="ApiCases"/>, what exists
/// (vm1, sdA, sdB, host-1) appears only beside an argument that is wrong for sure, and no migration goes to sdB.
/// </summary>
public static class CliCases
{
    public static Gen<string[]> For(HostileCluster cluster)
    {
        // An argument vector cannot carry NUL: it ends the string at exec.
        var text = Text.Select(NoNul);
        var id = Id.Select(NoNul);
        var vmRef = Gen.OneOf(cluster.VmId, HostileCluster.VmName);
        var domainRef = Gen.Frequency((3, text), (1, Gen.OneOf("sdA", cluster.DomainAId)));
        var wrongRate = Gen.OneOf("-5", "0x10", "9999999999999999999P", "fast", "\u0663MiB", "\uff11\uff10M", "", "1e3", "NaN", "-0.5MiB/s", "1T/h");
        var size = SizeText.Select(NoNul);
        var diskOptions = Gen.OneOf("", ":snapshots=2", ":snapshots=99", ":snapshots=-1", ":snapshots=\u0663", ":snapshots=", ":format=vmdk", ":format=qcow2",
            ":preallocated", ":preallocated=yes", ":snapshots=1:snapshots=1", ":bogus", "::", ":format=raw:format=raw");
        var disk = Gen.Select(size, domainRef, diskOptions).Select((s, d, o) => $"{s}@{d}{o}");
        var wrongDisk = Gen.OneOf("-512@sdA", "0@sdA", "1000@sdA", "64MiB@sdA:snapshots=33", "64MiB@sdA:format=vmdk", "64MiB@no-such-domain",
            "64MiB", "@sdA", "64MiB@", "\u0663MiB@sdA", "64MiB@sdA:snapshots=\u0663", "9999999999999999999P@sdA");

        // A NUL in a path becomes a newline, which the host refuses too ("%00" would be a fine folder name).
        var path = EscapingPath(cluster.Session.Storage, cluster.EscapeLink).Select(p => p.Replace('\0', '\n'));
        var domainCreate = Gen.Select(text, path, Gen.Frequency((3, size.Select(s => (string?)s)), (1, Gen.Const((string?)null))))
            .Select((name, path, capacity) => Args(["domain", "create", name, "--path", path], capacity is null ? [] : ["--capacity", capacity]));
        var vmCreate = Gen.Frequency(
            // a host that does not exist
            (3, Gen.Select(text, text, disk.Array[1, 3]).Select((name, host, disks) => Args(["vm", "create", name, "--host", host], disks.SelectMany(d => new[] { "--disk", d })))),
            // host-1 with a first disk that is wrong for sure
            (2, Gen.Select(Gen.Frequency((3, text), (1, Gen.Const("vm1"))), wrongDisk, disk.Array[0, 2])
                .Select((name, first, more) => Args(["vm", "create", name, "--host", "host-1", "--disk", first], more.SelectMany(d => new[] { "--disk", d })))));
        var vmActions = Gen.Select(Gen.OneOf("start", "stop", "snapshot"), Gen.OneOf(text, id))
            .Select((action, vm) => new[] { "vm", action, vm });
        var vmIo = Gen.Frequency(
            (1, Gen.Select(Gen.OneOf(text, id), size).Select((vm, rate) => new[] { "vm", "io", vm, "--rate", rate, "--seconds", "1" })),
            (2, Gen.Select(vmRef, wrongRate, Gen.OneOf("1", "-1", "x", "99999999999")).Select((vm, rate, seconds) => new[] { "vm", "io", vm, "--rate", rate, "--seconds", seconds })),
            (1, Gen.Select(vmRef, Gen.OneOf("-5", "fast", "\u0663")).Select((vm, interval) => new[] { "vm", "io", vm, "--rate", "fast", "--flush-interval", interval })));
        var migrate = Gen.Select(
                Gen.Frequency((2, Gen.OneOf(text, id)), (2, vmRef)),
                Gen.Frequency((3, Gen.OneOf(text, id)), (1, Gen.OneOf("sdA", cluster.DomainAId))),
                Gen.Frequency((3, Gen.Const((string?)null)), (1, Gen.OneOf(id, Gen.Const(cluster.ImageId)).Select(s => (string?)s))),
                Gen.Frequency((3, Gen.Const((string?)null)), (1, Gen.OneOf(text, Gen.OneOf("pre-copy", "post-copy")).Select(s => (string?)s))),
                Gen.Frequency((2, Gen.Const((string?)null)), (2, size.Select(s => (string?)s))),
                Gen.Frequency((3, Gen.Const((string?)null)), (1, Gen.OneOf(text, Gen.OneOf("background", "write-blocking")).Select(s => (string?)s))))
            .Select((vm, to, image, strategy, bandwidth, mode) => Args(["migrate", vm, "--to", to],
                image is null ? [] : ["--disk", image], strategy is null ? [] : ["--strategy", strategy],
                bandwidth is null ? [] : ["--bandwidth", bandwidth], mode is null ? [] : ["--copy-mode", mode]));
        var migrationActions = Gen.Frequency(
            (3, Gen.Select(Gen.OneOf("cancel", "resume", "abandon"), id).Select((action, migration) => new[] { "migration", action, migration })),
            (2, Gen.Select(id, size).Select((migration, rate) => new[] { "migration", "set-speed", migration, rate })));
        var clusterActions = Gen.Select(Gen.OneOf("leave", "down", "join"),
                Gen.OneOf<string>(text, Gen.OneOf("akka.tcp://lsm@127.0.0.1", "akka.tcp://other@127.0.0.1:4053", "akka://lsm", "akka.tcp://lsm@127.0.0.1:99999"),
                    Gen.Int[1, 65535].Select(port => $"akka.tcp://lsm@203.0.113.7:{port}")))
            // a well-formed address of a node that does not exist: leave/down are refused, but join would be asked for
            .Where((action, address) => !(action == "join" && address.StartsWith("akka.tcp://lsm@203.0.113.7:", StringComparison.Ordinal)))
            .Select((action, address) => new[] { "cluster", action, address });

        return Gen.Frequency((3, domainCreate), (3, vmCreate), (1, vmActions), (2, vmIo), (4, migrate), (2, migrationActions), (1, clusterActions));
    }

    private static string NoNul(string text) => text.Replace("\0", "%00");

    private static string[] Args(string[] head, params IEnumerable<string>[] tails) => [.. head, .. tails.SelectMany(t => t)];
}
