using LiveMigration.HostNode.Guest;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Guest;

public sealed class WriteLedgerTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), $"lsm-ledger-{Guid.NewGuid():N}");
    private readonly ImageId _drive = ImageId.New();

    public WriteLedgerTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    /// <summary>The writer's timestamp is inside the checksum, so the tests stamp at one fixed instant to rebuild a block exactly.</summary>
    private static readonly DateTimeOffset At = new(2025, 1, 2, 3, 4, 5, TimeSpan.Zero);

    private static BlockStamp Stamp(ImageId drive, long offset, long seq, int blockSize = 4096) =>
        BlockStamp.Write(new byte[blockSize], drive, offset, seq, At);

    [Fact]
    public void A_stamped_block_reads_back_and_a_flipped_byte_is_caught()
    {
        var block = new byte[4096];
        var written = BlockStamp.Write(block, _drive, 81920, 42, DateTimeOffset.UtcNow);
        var read = BlockStamp.TryRead(block, out var problem);
        Assert.Null(problem);
        Assert.Equal(written, read);

        block[3000] ^= 1;
        Assert.Null(BlockStamp.TryRead(block, out problem));
        Assert.Contains("corrupt", problem);

        Assert.Null(BlockStamp.TryRead(new byte[4096], out problem));
        Assert.Contains("not a stamped block", problem);
    }

    [Fact]
    public void The_same_offset_and_sequence_give_the_same_payload_and_checksum()
    {
        var a = new byte[4096];
        var b = new byte[4096];
        var at = DateTimeOffset.UtcNow;
        Assert.Equal(BlockStamp.Write(a, _drive, 4096, 9, at).Checksum, BlockStamp.Write(b, _drive, 4096, 9, at).Checksum);
        Assert.Equal(a, b);
        Assert.NotEqual(BlockStamp.Write(b, _drive, 4096, 10, at).Checksum, BlockStamp.Write(a, _drive, 4096, 9, at).Checksum);
    }

    [Fact]
    public void The_ledger_file_round_trips_acknowledged_and_in_doubt_writes()
    {
        var path = Path.Combine(_folder, "ledger.txt");
        using (var ledger = WriteLedger.Open(path, _drive))
        {
            foreach (var (offset, seq) in new[] { (0L, 1L), (4096L, 2L), (0L, 3L) })
            {
                var stamp = Stamp(_drive, offset, seq);
                ledger.RecordSent(stamp);
                ledger.RecordAcknowledged(stamp);
            }
            ledger.RecordSent(Stamp(_drive, 4096, 4)); // the connection died under this one
            Assert.Equal(1, ledger.InDoubtCount);
        }

        var loaded = WriteLedger.Load(path);
        Assert.Equal(_drive, loaded.Drive);
        Assert.Equal(4096, loaded.BlockSize);
        Assert.Equal(4, loaded.LastSequence);
        Assert.Equal(3, loaded.AcknowledgedWrites);
        Assert.Equal(1, loaded.InDoubtCount);
        Assert.False(loaded.IsWritable);
        var blocks = loaded.Snapshot();
        Assert.Equal([0L, 4096L], blocks.Select(b => b.Offset));
        Assert.Equal(3, blocks[0].Acknowledged!.Value.Sequence);
        Assert.Empty(blocks[0].InDoubt);
        Assert.Equal(2, blocks[1].Acknowledged!.Value.Sequence);
        Assert.Equal(4, Assert.Single(blocks[1].InDoubt).Sequence);
        Assert.Equal(Stamp(_drive, 0, 3).Checksum, blocks[0].Acknowledged!.Value.Checksum);

        // reopening appends, and an acknowledgement supersedes the write in doubt on that block
        using (var again = WriteLedger.Open(path, _drive))
        {
            Assert.Equal(4, again.LastSequence);
            var stamp = Stamp(_drive, 4096, 5);
            again.RecordSent(stamp);
            again.RecordAcknowledged(stamp);
        }
        var final = WriteLedger.Load(path);
        Assert.Equal(0, final.InDoubtCount);
        var block = final.Find(4096)!;
        Assert.Equal(5, block.Acknowledged!.Value.Sequence);
        Assert.Empty(block.InDoubt);
    }

    [Fact]
    public void A_line_cut_short_by_a_dying_writer_is_ignored_and_a_foreign_ledger_is_refused()
    {
        var path = Path.Combine(_folder, "ledger.txt");
        using (var ledger = WriteLedger.Open(path, _drive))
        {
            var stamp = Stamp(_drive, 8192, 1);
            ledger.RecordSent(stamp);
            ledger.RecordAcknowledged(stamp);
        }
        File.AppendAllText(path, "W 2 8192 00ab");
        var loaded = WriteLedger.Load(path);
        Assert.Equal(1, loaded.LastSequence);
        Assert.Equal(0, loaded.InDoubtCount);

        var error = Assert.Throws<OperationFailedException>(() => WriteLedger.Open(path, ImageId.New()));
        Assert.Equal(ErrorCodes.Conflict, error.Code);
        Assert.Contains(_drive.ToString(), error.Message);
    }

    [Fact]
    public void A_malformed_ledger_names_the_line()
    {
        var path = Path.Combine(_folder, "bad.txt");
        File.WriteAllText(path, $"LSM-WRITE-LEDGER v1 drive={_drive} block-size=4096\nA 7\n");
        var error = Assert.Throws<OperationFailedException>(() => WriteLedger.Load(path));
        Assert.Equal(ErrorCodes.InvalidArgument, error.Code);
        Assert.Contains("line 2", error.Message);
    }

    [Fact]
    public void A_block_may_hold_its_last_acknowledged_stamp_or_the_one_in_doubt_and_nothing_else()
    {
        var ledger = WriteLedger.InMemory(_drive);
        var acknowledged = Stamp(_drive, 4096, 1);
        ledger.RecordSent(acknowledged);
        ledger.RecordAcknowledged(acknowledged);
        ledger.RecordSent(Stamp(_drive, 4096, 2));
        var expected = ledger.Find(4096)!;

        Assert.Null(GuestVerifier.Check(_drive, expected, Block(4096, 1)));
        Assert.Null(GuestVerifier.Check(_drive, expected, Block(4096, 2)));

        var newer = GuestVerifier.Check(_drive, expected, Block(4096, 3));
        Assert.NotNull(newer);
        Assert.Equal(3, newer.FoundSequence);
        Assert.Contains("in-doubt seq 2", newer.Expected);

        // same sequence number, different content: not the write that was acknowledged
        Assert.NotNull(GuestVerifier.Check(_drive, expected, Block(4096, 1, At.AddSeconds(1))));

        Assert.NotNull(GuestVerifier.Check(_drive, expected, new byte[4096]));
        Assert.NotNull(GuestVerifier.Check(_drive, expected, Block(8192, 1)));
        Assert.NotNull(GuestVerifier.Check(_drive, expected, BlockOf(ImageId.New(), 4096, 1)));
    }

    [Fact]
    public void A_block_only_ever_written_in_doubt_may_still_hold_its_old_content()
    {
        var ledger = WriteLedger.InMemory(_drive);
        ledger.RecordSent(Stamp(_drive, 0, 1));
        var expected = ledger.Find(0)!;
        Assert.Null(GuestVerifier.Check(_drive, expected, new byte[4096]));
        Assert.Null(GuestVerifier.Check(_drive, expected, Block(0, 1)));
        Assert.NotNull(GuestVerifier.Check(_drive, expected, Block(0, 5)));
    }

    private byte[] Block(long offset, long seq, DateTimeOffset? at = null) => BlockOf(_drive, offset, seq, at);

    private static byte[] BlockOf(ImageId drive, long offset, long seq, DateTimeOffset? at = null)
    {
        var block = new byte[4096];
        BlockStamp.Write(block, drive, offset, seq, at ?? At);
        return block;
    }
}
