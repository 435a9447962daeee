using System.Text.Json;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Hypervisor.Qmp;

/// <summary>
/// The drives' open chains read from QEMU's node graph must say what QEMU's full description of the nodes says (the
/// way they were read before, which held QEMU's main loop many times longer): a plain chain, and one under a running
/// mirror's filter. A layer the caller cannot name is no answer, so the caller asks QEMU for the file names instead.
/// </summary>
public sealed class BlockGraphTests : BareQemuTests
{
    [Fact]
    public async Task The_graph_names_the_same_chain_as_the_full_description_with_and_without_a_mirror_over_it()
    {
        await using var qmp = await QmpClient.ConnectAsync(Qemu.Socket);
        var chain = await Bed.CreateChainAsync(layers: 3, capacity: 16 * QemuTestBed.MiB);
        string? below = null;
        for (var i = 0; i < chain.Layers.Count; i++)
        {
            var layer = chain.Layers[i];
            var readOnly = i < chain.Layers.Count - 1;
            await qmp.ExecuteAsync("blockdev-add", BlockNodes.FileNodeOptions(layer, readOnly));
            await qmp.ExecuteAsync("blockdev-add", BlockNodes.FormatNodeOptions(layer, below, readOnly));
            below = BlockNodes.FormatNode(layer);
        }
        var leafNode = below!;
        var known = chain.Layers.ToDictionary(BlockNodes.FormatNode, l => l.Path);

        Assert.Equal(chain.Layers.Select(l => l.Path), await FromGraphAsync(qmp, leafNode, known));
        Assert.Equal(chain.Layers.Select(l => l.Path), await FromFullDescriptionAsync(qmp, leafNode));
        var plain = BlockGraph.Parse(await qmp.ExecuteAsync("x-debug-query-block-graph"));
        Assert.Equal(chain.Layers.SelectMany(l => new[] { BlockNodes.FormatNode(l), BlockNodes.FileNode(l) }).Order(), plain.NodeNames.Order());
        Assert.True(plain.HasBacking(leafNode));
        Assert.False(plain.HasBacking(BlockNodes.FormatNode(chain.Layers[0])));
        Assert.False(plain.HasBacking("no-such-node"));

        // a mirror puts its filter over the leaf: the node a drive's export then sits on
        var target = await Bed.CreateLeafAsync(Bed.DomainB, chain.Image, VolumeId.New(), chain.Layers[^2], 16 * QemuTestBed.MiB);
        await qmp.ExecuteAsync("blockdev-add", BlockNodes.FileNodeOptions(target, readOnly: false));
        await qmp.ExecuteAsync("blockdev-add", BlockNodes.FormatNodeOptions(target, null, readOnly: false));
        await qmp.ExecuteAsync("blockdev-mirror", new Dictionary<string, object?>
        {
            ["job-id"] = "m", ["device"] = leafNode, ["target"] = BlockNodes.FormatNode(target), ["sync"] = "top", ["speed"] = 1,
        });
        var graph = await qmp.ExecuteAsync("x-debug-query-block-graph");
        var filter = FilterOver(graph, leafNode);
        Assert.Equal(await FromFullDescriptionAsync(qmp, filter), await FromGraphAsync(qmp, filter, known));
        Assert.Equal(chain.Layers.Select(l => l.Path), await FromGraphAsync(qmp, filter, known));

        // a layer the caller does not know, or a node that is not there: no answer
        Assert.Null(BlockGraph.Parse(graph).OpenChainBaseFirst(filter, known.Where(kv => kv.Key != BlockNodes.FormatNode(chain.Layers[0])).ToDictionary()));
        Assert.Null(BlockGraph.Parse(graph).OpenChainBaseFirst("no-such-node", known));
        await qmp.ExecuteAsync("block-job-cancel", new Dictionary<string, object?> { ["device"] = "m", ["force"] = true });
    }

    private static async Task<IReadOnlyList<string>?> FromGraphAsync(QmpClient qmp, string node, Dictionary<string, string> known) =>
        BlockGraph.Parse(await qmp.ExecuteAsync("x-debug-query-block-graph")).OpenChainBaseFirst(node, known);

    private static async Task<IReadOnlyList<string>> FromFullDescriptionAsync(QmpClient qmp, string node)
    {
        var nodes = await qmp.ExecuteAsync("query-named-block-nodes");
        var info = nodes.EnumerateArray().Single(n => n.GetProperty("node-name").GetString() == node);
        return BlockNodes.OpenChainLeafFirst(info).AsEnumerable().Reverse().ToList();
    }

    /// <summary>The node whose backing child is <paramref name="node"/>: the mirror's filter, named by QEMU.</summary>
    private static string FilterOver(JsonElement graph, string node)
    {
        var names = graph.GetProperty("nodes").EnumerateArray().ToDictionary(n => n.GetProperty("id").GetInt64(), n => n.GetProperty("name").GetString() ?? "");
        var id = names.Single(kv => kv.Value == node).Key;
        var parent = graph.GetProperty("edges").EnumerateArray()
            .Single(e => e.GetProperty("child").GetInt64() == id && e.GetProperty("name").GetString() == "backing"
                         && names.GetValueOrDefault(e.GetProperty("parent").GetInt64(), "").StartsWith('#'))
            .GetProperty("parent").GetInt64();
        return names[parent];
    }
}
